"""A client for tests/faults/test_dead_peer.py, run inside the partition namespace:
``python dead_peer_client.py MODE URL``.

It connects (with :data:`FAST` network settings, or the LISTEN connection's defaults), runs one
statement, prints ``ready``, waits for a line on stdin (the test cuts the network meanwhile),
then waits on the connection the way MODE says and prints one JSON line: how long until the
connection failed, and the error.

Modes: ``busy`` (psycopg: a statement sent into the cut), ``idle`` (psycopg: waiting for the
server to say anything, as a LISTEN connection does), ``bare-busy`` (``busy`` without network
settings: libpq's defaults), ``asyncpg-busy``, ``listen-idle`` (the workers' ListenConnection,
with the default settings).
"""

from __future__ import annotations

import asyncio
import json
import select
import sys
import time

from sqlalchemy import text

from pgq_sa._config import NetworkSettings, make_async_engine, make_engine
from pgq_sa._notifications import ListenConnection

FAST = NetworkSettings(
    keepalive_idle=1, keepalive_interval=1, keepalive_count=2, tcp_user_timeout=3, connect_timeout=2
)


_cut_at: list[float] = []  # when the test said the network is cut


def _ready() -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    _cut_at.append(time.monotonic())


def psycopg_client(mode: str, url: str) -> None:
    engine = make_engine(url, network=None if mode == "bare-busy" else FAST)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        _ready()
        if mode.endswith("busy"):
            connection.execute(text("SELECT 2"))
        else:
            driver = connection.connection.driver_connection
            select.select([driver.fileno()], [], [])
            driver.pgconn.consume_input()


async def asyncpg_client(url: str) -> None:
    engine = make_async_engine(url, network=FAST)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
        _ready()
        await connection.execute(text("SELECT 2"))


def listen_client(url: str) -> None:
    listener = ListenConnection(url, ["dead_peer"])
    listener.connect()
    _ready()
    while True:
        listener.wait(60)


def main() -> None:
    mode, url = sys.argv[1:3]
    try:
        if mode == "asyncpg-busy":
            asyncio.run(asyncpg_client(url))
        elif mode == "listen-idle":
            listen_client(url)
        else:
            psycopg_client(mode, url)
        error = None
    except Exception as caught:
        error = f"{type(caught).__name__}: {caught}"
    seconds = time.monotonic() - _cut_at[0] if _cut_at else None
    print(json.dumps({"seconds": seconds, "error": error}), flush=True)


if __name__ == "__main__":
    main()
