"""LISTEN/NOTIFY for workers and waiters: one dedicated connection, decoded messages.

The connection is a plain psycopg connection in autocommit mode; reading is split from waiting so
the thread worker waits with ``select`` and the async worker with ``anyio.wait_readable`` (asyncio
and trio alike), while both decode the same messages. Notifications are hints: whoever listens
also polls, and after a reconnect treats the silence as "something may have happened".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import URL

from pgq_sa import _config, _deadlines
from pgq_sa._config import libpq_conninfo

log = logging.getLogger("pgq_sa.listener")


@dataclass(frozen=True)
class Message:
    """A decoded notification: a wake-up for some tasks, a cancellation, or finished jobs."""

    channel: str
    reason: str
    tasks: frozenset[str] | None = None
    job_id: int | None = None
    finished_ids: frozenset[int] | None = None
    run_at: float | None = None

    def concerns(self, tasks: Iterable[str]) -> bool:
        """Does this wake-up name any of ``tasks`` (or everything)?"""
        return self.tasks is None or not self.tasks.isdisjoint(tasks)


def decode(channel: str, payload: str) -> Message:
    """Decode one notification; malformed payloads become a wake-up for everything."""
    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    reason = str(data.get("reason") or ("finished" if "ids" in data else "enqueued"))
    if reason == "cancel" and isinstance(data.get("id"), int):
        return Message(channel, "cancel", job_id=data["id"])
    if "ids" in data:
        ids = data["ids"]
        finished = (
            frozenset(i for i in ids if isinstance(i, int)) if isinstance(ids, list) else None
        )
        return Message(channel, "finished", finished_ids=finished)
    tasks = data.get("tasks")
    run_at = data.get("run_at")
    return Message(
        channel,
        reason,
        tasks=frozenset(t for t in tasks if isinstance(t, str))
        if isinstance(tasks, list)
        else None,
        run_at=float(run_at) if isinstance(run_at, (int, float)) else None,
    )


def conninfo(url: str | URL) -> str:
    """A libpq connection string for ``url`` (any SQLAlchemy PostgreSQL URL, of any driver): its
    address, credentials and only the options libpq understands (``sslmode``,
    ``application_name``...; asyncpg's ``ssl=`` as ``sslmode=``); driver options such as
    ``prepared_statement_cache_size`` never reach libpq."""
    return make_conninfo("", **libpq_conninfo(url))


class ListenConnection:
    """A connection that LISTENs on ``channels``; ``read`` returns what has arrived."""

    def __init__(self, url: str | URL, channels: Iterable[str]) -> None:
        self._conninfo = conninfo(url)
        self._channels = tuple(channels)
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None
        self._held: list[Message] = []  # notifications psycopg received during a ping
        self._interrupted = False  # the worker is closing: waits end at once (threads)
        self._wake: tuple[int, int] | None = None  # a pipe ending a wait in progress

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.closed

    def connect(self) -> None:
        """(Re)connect and LISTEN on every channel. The connection detects a dead peer by
        keepalives (it is idle most of the time) unless its URL says otherwise."""
        self.close()
        given = conninfo_to_dict(self._conninfo)
        network = _config.libpq_defaults(given, _config.DEFAULT_NETWORK)
        connection = psycopg.connect(make_conninfo(self._conninfo, **network), autocommit=True)
        try:
            connection.add_notify_handler(self._hold)
            for channel in self._channels:
                connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _hold(self, notify: psycopg.Notify) -> None:
        self._held.append(decode(notify.channel, notify.payload))

    def ping(self, timeout: float) -> None:
        """Ask the server for an answer within ``timeout`` seconds: an idle connection whose
        peer vanished is found out (keepalives may be off, or answered by a middlebox), and
        replaced by the caller. Notifications that arrive meanwhile are kept for ``read``."""
        connection = self._connection
        if connection is None:
            raise psycopg.OperationalError("the listen connection is not open")
        try:
            with _deadlines.guard(connection, timeout):
                connection.execute("SELECT 1")
        except _deadlines.StatementDeadline as error:
            raise psycopg.OperationalError(str(error)) from error

    def fileno(self) -> int:
        if self._connection is None:
            raise psycopg.OperationalError("the listen connection is not open")
        return self._connection.fileno()

    def read(self) -> list[Message]:
        """Consume what the server sent; raises ``psycopg.OperationalError`` if the link broke."""
        connection = self._connection
        if connection is None:
            raise psycopg.OperationalError("the listen connection is not open")
        pgconn = connection.pgconn
        pgconn.consume_input()  # raises psycopg.OperationalError when the link is broken
        messages, self._held = self._held, []
        while (notify := pgconn.notifies()) is not None:
            messages.append(decode(notify.relname.decode(), notify.extra.decode(errors="replace")))
        return messages

    def wait(self, timeout: float) -> list[Message]:
        """Block up to ``timeout`` seconds for notifications (threads), or until
        :meth:`interrupt`."""
        if self._held:
            return self.read()
        if self._wake is None:
            self._wake = os.pipe()
            os.set_blocking(self._wake[0], False)
        if self._interrupted:  # tested after the pipe exists: an interrupt cannot be missed
            return []
        wake = self._wake[0]
        ready, _, _ = select.select([self.fileno(), wake], [], [], max(timeout, 0))
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 64)
            ready.remove(wake)
        return self.read() if ready else []

    def interrupt(self) -> None:
        """End a :meth:`wait` in progress, and every later one, at once: the worker is closing
        and its listener should not sit out its wait."""
        self._interrupted = True
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):
                os.write(wake[1], b"!")

    async def wait_async(self, timeout: float | None) -> list[Message]:
        """Wait up to ``timeout`` seconds for notifications (asyncio or trio); None: as long as
        the caller's own cancel scope lets it."""
        if self._held:
            return self.read()
        if timeout is None:
            await anyio.wait_readable(self.fileno())
            return self.read()
        with anyio.move_on_after(max(timeout, 0)):
            await anyio.wait_readable(self.fileno())
            return self.read()
        return []

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
            self._connection = None
        wake, self._wake = self._wake, None
        if wake is not None:
            for descriptor in wake:
                with contextlib.suppress(OSError):
                    os.close(descriptor)
