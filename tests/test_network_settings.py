"""NetworkSettings reach real connections: libpq parameters of psycopg engines (sync and async)
and of the LISTEN connection, socket options of asyncpg's, read back from the connection and
from the kernel; the URL and the caller's connect_args win; bad settings are refused.

How a blackholed connection then fails in bounded time: tests/faults/test_dead_peer.py.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
from sqlalchemy.engine import URL

from pgq_sa._config import NetworkSettings, make_async_engine, make_engine
from pgq_sa._notifications import ListenConnection

SETTINGS = NetworkSettings(
    keepalive_idle=7, keepalive_interval=3, keepalive_count=4, tcp_user_timeout=9.5
)


def kernel_options(fileno: int) -> dict[str, int]:
    """What the kernel has for the socket ``fileno`` (a duplicate is inspected)."""
    sock = socket.socket(fileno=os.dup(fileno))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


EXPECTED = {"keepalive": 1, "idle": 7, "interval": 3, "count": 4, "user_timeout_ms": 9500}


@pytest.fixture
def tcp_url(database_url: URL) -> URL:
    """The test database over TCP (the embedded server listens on a Unix socket only)."""
    if not database_url.host:
        pytest.skip("keepalives are TCP options: the test server is on a Unix socket")
    return database_url


def test_defaults_bound_dead_peers_to_ten_seconds():
    network = NetworkSettings()
    assert network.dead_peer_within == 10.0
    assert network.libpq_parameters() == {
        "keepalives": "1",
        "keepalives_idle": "4",
        "keepalives_interval": "2",
        "keepalives_count": "3",
        "connect_timeout": "5",
        "tcp_user_timeout": "10000",
    }


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("keepalive_idle", 0, ValueError, "keepalive_idle must be 1 or more"),
        ("keepalive_count", 2.5, TypeError, "keepalive_count must be an int"),
        ("connect_timeout", True, TypeError, "connect_timeout must be an int"),
        ("tcp_user_timeout", 0, ValueError, "tcp_user_timeout must be a finite number"),
        ("tcp_user_timeout", "5", TypeError, "tcp_user_timeout must be seconds"),
    ],
)
def test_bad_settings_are_refused(field, value, error, message):
    with pytest.raises(error, match=message):
        NetworkSettings(**{field: value})


def test_psycopg_engine_connections_carry_the_settings(tcp_url):
    engine = make_engine(tcp_url, network=SETTINGS)
    try:
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            parameters = driver.info.get_parameters()
            assert parameters["keepalives"] == "1"
            assert parameters["keepalives_idle"] == "7"
            assert parameters["tcp_user_timeout"] == "9500"
            assert parameters["connect_timeout"] == "5"
            assert kernel_options(driver.fileno()) == EXPECTED
    finally:
        engine.dispose()


def test_the_url_and_connect_args_win_and_none_leaves_libpq_alone(tcp_url):
    url = tcp_url.update_query_dict({"keepalives_idle": "11"})
    engine = make_engine(url, network=SETTINGS, connect_args={"keepalives_count": "5"})
    bare = make_engine(tcp_url, network=None)
    try:
        with engine.connect() as connection, bare.connect() as plain:
            driver = connection.connection.driver_connection
            parameters = driver.info.get_parameters()
            assert (parameters["keepalives_idle"], parameters["keepalives_count"]) == ("11", "5")
            assert parameters["keepalives_interval"] == "3"  # the settings fill the rest
            assert kernel_options(driver.fileno())["idle"] == 11
            untouched = plain.connection.driver_connection.info.get_parameters()
            assert "keepalives_idle" not in untouched
            assert "tcp_user_timeout" not in untouched
    finally:
        engine.dispose()
        bare.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_async_engine_connections_carry_the_settings(tcp_url, driver):
    """asyncpg: socket options set through its transport; async psycopg: libpq parameters."""
    drivername = "postgresql" if driver == "asyncpg" else "postgresql+psycopg"
    engine = make_async_engine(tcp_url.set(drivername=drivername), network=SETTINGS)
    try:
        async with engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert type(raw).__module__.split(".")[0] == driver
            if driver == "asyncpg":
                fileno = raw._transport.get_extra_info("socket").fileno()
            else:
                assert raw.info.get_parameters()["keepalives_count"] == "4"
                fileno = raw.fileno()
            assert kernel_options(fileno) == EXPECTED
    finally:
        await engine.dispose()


def test_the_listen_connection_carries_the_defaults_unless_its_url_says_otherwise(tcp_url):
    listener = ListenConnection(tcp_url, ["network_settings_test"])
    own = ListenConnection(tcp_url.update_query_dict({"keepalives": "0"}), ["x"])
    try:
        listener.connect()
        own.connect()
        assert listener._connection is not None
        parameters = listener._connection.info.get_parameters()
        assert parameters["keepalives_idle"] == "4"
        assert parameters["tcp_user_timeout"] == "10000"
        assert kernel_options(listener.fileno())["keepalive"] == 1
        assert kernel_options(own.fileno())["keepalive"] == 0
    finally:
        listener.close()
        own.close()


def test_a_closing_worker_s_listener_does_not_sit_out_its_wait(database_url):
    """ListenConnection.interrupt ends a wait in progress (and every later one) at once: a
    stopping ThreadWorker's listener does not hold the stop for its wait's length."""
    listener = ListenConnection(database_url, ["interrupt_test"])
    listener.connect()
    waiting, ended = threading.Event(), threading.Event()

    def wait() -> None:
        waiting.set()
        assert listener.wait(600) == []
        ended.set()

    thread = threading.Thread(target=wait, daemon=True)
    try:
        thread.start()
        assert waiting.wait(10)
        listener.interrupt()
        assert ended.wait(30), "the wait was not interrupted"
        assert listener.wait(600) == []  # and every later wait ends at once
    finally:
        listener.close()
