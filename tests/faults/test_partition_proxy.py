"""The partition proxy itself: it forwards and identifies connections, a cut holds both ways
without closing anything, heal alive delivers what was held, heal dead leaves the old client
socket open and silent while new connections work.

Waiting for "nothing happened" needs a window: a forwarded answer would take milliseconds, the
windows here are half a second or more, so a proxy that forwards during a cut fails them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from partition_proxy import PartitionProxy, startup_parameters, upstream_address
from sqlalchemy import Engine
from sqlalchemy.engine import URL

pytestmark = [pytest.mark.faults]

QUIET = 0.5  # seconds in which a forwarding proxy would certainly have answered


@pytest.fixture
def proxy(server_url: URL) -> Iterator[PartitionProxy]:
    with PartitionProxy.running(upstream_address(server_url)) as running:
        yield running


def connect(proxy: PartitionProxy, server_url: URL, **options: object) -> psycopg.Connection:
    url = proxy.url(server_url).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, **options)


class Blocked:
    """Run ``call`` in a thread, to see whether it is still waiting."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = call()
            except BaseException as error:
                self.error = error

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def waiting_after(self, seconds: float) -> bool:
        self.thread.join(seconds)
        return self.thread.is_alive()


def local_port(connection: psycopg.Connection) -> int:
    sock = socket.socket(fileno=os.dup(connection.fileno()))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def backend_query(admin_engine: Engine, pid: int) -> str | None:
    with admin_engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT query FROM pg_stat_activity WHERE pid = %(pid)s", {"pid": pid}
        ).first()
    return None if row is None else str(row[0])


def test_startup_packets_are_read_after_an_ssl_request():
    body = b"user\0u\0database\0d\0application_name\0w1\0\0"
    startup = (8 + len(body)).to_bytes(4, "big") + (196608).to_bytes(4, "big") + body
    ssl_request = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    assert startup_parameters(ssl_request + startup) == {
        "user": "u",
        "database": "d",
        "application_name": "w1",
    }
    assert startup_parameters(ssl_request + startup[:12]) is None
    cancel = (16).to_bytes(4, "big") + (80877102).to_bytes(4, "big") + bytes(8)
    assert startup_parameters(cancel) == {"cancel": "1"}


def test_forwards_and_identifies_connections(proxy, server_url):
    with (
        connect(proxy, server_url, application_name="alpha") as alpha,
        connect(proxy, server_url, application_name="beta") as beta,
    ):
        alpha.execute("LISTEN partition_test")
        assert beta.execute("SELECT 7").fetchone() == (7,)
        links = {link.application_name: link for link in proxy.links}
        assert set(links) == {"alpha", "beta"}
        assert links["alpha"].listens
        assert not links["beta"].listens
        assert links["alpha"].index < links["beta"].index
        assert links["beta"].client_port == local_port(beta)


def test_a_cut_holds_both_ways_and_heal_alive_delivers(proxy, server_url, admin_engine):
    with connect(proxy, server_url) as connection:
        pid = connection.info.backend_pid
        (link,) = proxy.cut()
        assert link.state == "cut"
        query = Blocked(lambda: connection.execute("SELECT 42 AS held").fetchone())
        assert query.waiting_after(QUIET)
        assert "held" not in (backend_query(admin_engine, pid) or "")  # never reached it
        proxy.heal(alive=True)
        assert not query.waiting_after(10)
        assert query.error is None
        assert query.result == (42,)
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_heal_dead_leaves_the_old_socket_silent_and_new_connections_work(
    proxy, server_url, admin_engine
):
    connection = connect(proxy, server_url)
    pid = connection.info.backend_pid
    proxy.cut()
    query = Blocked(lambda: connection.execute("SELECT 43").fetchone())
    assert query.waiting_after(QUIET)
    (link,) = proxy.heal(alive=False)
    assert link.state == "dead"
    deadline = time.monotonic() + 10
    while backend_query(admin_engine, pid) is not None:  # the server side was closed
        assert time.monotonic() < deadline, "the old backend is still there"
        time.sleep(0.05)
    # no answer, no FIN, no RST: anything arriving would end the blocked query
    assert query.waiting_after(2 * QUIET)
    with connect(proxy, server_url) as fresh:
        assert fresh.execute("SELECT 2").fetchone() == (2,)
    proxy.close()  # closes the dead socket too: the blocked query ends
    assert not query.waiting_after(10)
    assert isinstance(query.error, psycopg.OperationalError)
    connection.close()


def test_cut_matching_cuts_only_the_listen_connection(proxy, server_url):
    with (
        connect(proxy, server_url) as listener,
        connect(proxy, server_url) as sender,
    ):
        listener.execute("LISTEN partition_test")
        (cut,) = proxy.cut_matching(lambda link: link.listens)
        assert cut.listens
        sender.execute("NOTIFY partition_test, 'during'")  # the other connection still works
        assert list(listener.notifies(timeout=QUIET)) == []
        proxy.heal(alive=True)
        (notice,) = listener.notifies(timeout=10, stop_after=1)
        assert notice.payload == "during"


def test_new_connections_wait_during_a_cut_and_go_through_either_heal(proxy, server_url):
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, server_url, connect_timeout=2)
    assert 1.5 < time.monotonic() - started < 10  # libpq's timeout, not a refusal
    held = Blocked(lambda: connect(proxy, server_url))
    assert held.waiting_after(QUIET)
    proxy.heal(alive=False)  # kills established connections, not one still connecting
    assert not held.waiting_after(10)
    assert isinstance(held.result, psycopg.Connection)
    with held.result as connection:
        assert connection.execute("SELECT 3").fetchone() == (3,)
