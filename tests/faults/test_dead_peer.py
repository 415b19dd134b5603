"""A dead peer is detected in bounded time: through the partition proxy, a connection made with
NetworkSettings fails instead of waiting for ever.

New connections during a cut fail after ``connect_timeout`` (the proxy holds them: any
machine). Keepalives and ``tcp_user_timeout`` need a real blackhole, where nothing is
acknowledged: the clients run in a network namespace whose cut connections are dropped in the
kernel (root on Linux; skipped elsewhere, saying why).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from dead_peer_client import FAST
from partition_proxy import PartitionProxy, upstream_address
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from pgq_sa._config import DEFAULT_NETWORK, NetworkSettings, make_async_engine, make_engine

pytestmark = [pytest.mark.faults]

CLIENT = Path(__file__).with_name("dead_peer_client.py")
MARGIN = 3.0  # seconds beyond the configured bound: scheduling and timer granularity
HOLD = NetworkSettings(connect_timeout=2)


@pytest.fixture
def namespace() -> Iterator[netns.Netns]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netns.Netns.created() as created:
        yield created


def test_a_new_connection_during_a_cut_gives_up_after_connect_timeout(server_url):
    with PartitionProxy.running(upstream_address(server_url)) as proxy:
        engine = make_engine(proxy.url(server_url), network=HOLD, poolclass=None)
        try:
            proxy.cut()
            started = time.monotonic()
            with pytest.raises(DBAPIError), engine.connect():
                pass
            assert 1.5 < time.monotonic() - started < HOLD.connect_timeout + MARGIN
            proxy.heal()
            with engine.connect() as connection:
                assert connection.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_new_asyncpg_connection_during_a_cut_gives_up_after_its_timeout(server_url):
    with PartitionProxy.running(upstream_address(server_url)) as proxy:
        url = proxy.url(server_url).set(drivername="postgresql")
        engine = make_async_engine(url, network=HOLD)
        try:
            proxy.cut()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with engine.connect():
                    pass
            assert 1.5 < time.monotonic() - started < HOLD.connect_timeout + MARGIN
        finally:
            await engine.dispose()


def cut_while(namespace: netns.Netns, server_url: URL, mode: str, wait: float) -> dict:
    """Run the client in ``mode`` in the namespace, cut its connection once it is ready, and
    return what it reports, or ``{"waiting": True}`` if it still waits after ``wait`` s."""
    with PartitionProxy.running(upstream_address(server_url), namespace) as proxy:
        url = proxy.url(server_url).set(drivername="postgresql")
        command = [*namespace.prefix, sys.executable, str(CLIENT), mode]
        command.append(url.render_as_string(hide_password=False))
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        with subprocess.Popen(command, cwd=CLIENT.parent, text=True, **pipes) as child:
            try:
                assert child.stdout is not None
                assert child.stdin is not None
                assert child.stdout.readline().strip() == "ready"
                proxy.cut()
                child.stdin.write("go\n")
                child.stdin.flush()
                try:
                    output, _ = child.communicate(timeout=wait)
                except subprocess.TimeoutExpired:
                    return {"waiting": True}
                return dict(json.loads(output.strip().splitlines()[-1]))
            finally:
                child.kill()


@pytest.mark.parametrize("mode", ["busy", "idle", "asyncpg-busy"])
def test_a_blackholed_connection_fails_within_the_bound(namespace, server_url, mode):
    bound = FAST.dead_peer_within + MARGIN
    report = cut_while(namespace, server_url, mode, wait=bound + 10)
    assert report.get("error"), report
    assert report["seconds"] < bound, report


def test_without_settings_a_blackholed_statement_waits(namespace, server_url):
    """The control: libpq's defaults would wait ~15 minutes (retransmissions)."""
    report = cut_while(namespace, server_url, "bare-busy", wait=2 * FAST.dead_peer_within)
    assert report == {"waiting": True}


@pytest.mark.slow
def test_a_blackholed_listen_connection_fails_within_the_default_bound(namespace, server_url):
    bound = DEFAULT_NETWORK.dead_peer_within + MARGIN
    report = cut_while(namespace, server_url, "listen-idle", wait=bound + 10)
    assert report.get("error"), report
    assert report["seconds"] < bound, report
