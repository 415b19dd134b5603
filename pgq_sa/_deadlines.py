"""Client-side deadlines on the workers' statements: an answer that never comes ends in time.

A statement sent on a connection whose peer vanished without a word (a pulled cable, a NAT or a
firewall that forgot the flow, a failed-over load balancer) waits for an answer forever: no byte,
no FIN, no RST, and a server-side ``statement_timeout`` never reaches the client. So every worker
statement has a deadline kept on the client:

* on a sync connection (the ThreadWorker, and the AsyncWorker's worker threads on trio), one
  watchdog thread (:class:`Watchdog`) shuts the connection's socket down when the deadline
  passes; the driver call
  blocked on it fails at once, whatever the driver (psycopg, psycopg2 and pg8000 alike), and the
  lane discards the connection;
* on an async connection (asyncpg or async psycopg on asyncio), the awaiting task's cancel scope
  (``anyio.fail_after``), after which the connection is discarded.

Either way the caller sees :class:`StatementDeadline` and retries on a fresh connection. The
lanes also set ``statement_timeout`` on the server to the same value, so a statement stuck in a
lock there is ended too, and its locks released.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import anyio

from pgq_sa._errors import StatementDeadline
from pgq_sa._timers import TimerThread

log = logging.getLogger("pgq_sa.worker")

__all__ = [
    "DEFAULT_STATEMENT_TIMEOUT",
    "StatementDeadline",
    "async_guard",
    "guard",
    "timers",
    "watchdog",
]

DEFAULT_STATEMENT_TIMEOUT = 10.0


_timers: TimerThread | None = None
_watchdog: Watchdog | None = None
_started_lock = threading.Lock()


def timers() -> TimerThread:
    """The process's timer thread for the timeouts of ``def`` handlers run in the AsyncWorker's
    threads, started on first use."""
    global _timers
    with _started_lock:
        if _timers is None:
            _timers = TimerThread("pgq_sa-timers")
            _timers.start()
        return _timers


class Watchdog:
    """The statements in flight and their deadlines, checked every :data:`TICK` seconds by one
    thread while any is watched (and not at all while none is).

    Built for thousands of statements a second: watching one is a dict insert, unwatching it a
    dict pop, with no lock and no thread woken (a heap of timers would wake its thread for
    every statement, and again for every cancelled entry when it falls due). A deadline fires
    up to one tick late, which is nothing beside deadlines of seconds."""

    TICK = 0.05

    def __init__(self) -> None:
        self._watched: dict[int, tuple[float, Callable[[], None]]] = {}
        self._handles = itertools.count()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgq_sa-deadlines", daemon=True)
        self._thread.start()

    def watch(self, seconds: float, callback: Callable[[], None]) -> int:
        handle = next(self._handles)
        self._watched[handle] = (time.monotonic() + seconds, callback)
        if not self._busy.is_set():
            self._busy.set()
        return handle

    def unwatch(self, handle: int) -> None:
        self._watched.pop(handle, None)

    def _run(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(self.TICK)
            now = time.monotonic()
            for handle, (when, callback) in list(self._watched.items()):
                if when <= now and self._watched.pop(handle, None) is not None:
                    try:
                        callback()
                    except Exception:  # the watchdog must outlive any callback
                        log.exception("statement deadline callback failed")
            if not self._watched:
                self._busy.clear()
                if self._watched:  # watched between the test and the clear
                    self._busy.set()


def watchdog() -> Watchdog:
    """The process's one statement watchdog, started on first use."""
    global _watchdog
    with _started_lock:
        if _watchdog is None:
            _watchdog = Watchdog()
        return _watchdog


def _socket_of(dbapi_connection: Any) -> int | None:
    """The file descriptor of a driver connection, if the driver tells (psycopg, psycopg2:
    ``fileno()``; pg8000: its socket)."""
    with contextlib.suppress(Exception):
        return int(dbapi_connection.fileno())
    with contextlib.suppress(Exception):
        return int(dbapi_connection._usock.fileno())
    return None


def _cut(descriptor: int) -> None:
    """Shut the socket down under the driver's feet (its own descriptor stays open: the driver
    closes it when the lane discards the connection)."""
    with contextlib.suppress(OSError):
        duplicate = socket.socket(fileno=os.dup(descriptor))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


def _server_timeout(error: BaseException) -> bool:
    """Did the server cancel the statement for its own ``statement_timeout`` (SQLSTATE 57014)?"""
    original = getattr(error, "orig", None) or error
    return getattr(original, "sqlstate", None) == "57014" or (
        getattr(original, "pgcode", None) == "57014"
    )


class Guard:
    """One guarded statement: cut when its deadline passes, or at once by :meth:`cut_now` (a
    worker that stops does not wait for a claim that may never be answered)."""

    def __init__(self, descriptor: int | None) -> None:
        self._descriptor = descriptor
        self.fired = threading.Event()

    def cut_now(self) -> None:
        if self._descriptor is not None and not self.fired.is_set():
            self.fired.set()
            _cut(self._descriptor)


@contextlib.contextmanager
def guard(dbapi_connection: Any, seconds: float) -> Iterator[Guard]:
    """Cut ``dbapi_connection`` if the block takes longer than ``seconds``; then raise
    :class:`StatementDeadline` from whatever the driver raised. An unknown driver (no socket to
    cut) gets only the server-side ``statement_timeout``."""
    current = Guard(_socket_of(dbapi_connection))
    watching = watchdog()
    handle = watching.watch(seconds, current.cut_now)
    try:
        yield current
    except Exception as error:
        if current.fired.is_set() or _server_timeout(error):
            raise StatementDeadline(seconds) from error
        raise
    finally:
        watching.unwatch(handle)
    if current.fired.is_set():  # answered as the deadline passed: the connection is cut anyway
        raise StatementDeadline(seconds)


class async_guard:  # lower case: it reads as a function, ``with async_guard(seconds) as scope``
    """The same for an awaited statement: cancel it after ``seconds`` (or at once, by setting
    the cancel scope it yields to a deadline in the past). The scope is shielded from the
    awaiting task's own cancellation: a statement in flight finishes (or fails) before the task
    may be cancelled, so no pooled connection is abandoned half-way. (One scope for both, and a
    class rather than a generator-based context manager: a worker enters it for every statement.)"""

    __slots__ = ("_scope", "_seconds")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._scope = anyio.CancelScope(deadline=anyio.current_time() + seconds, shield=True)

    def __enter__(self) -> anyio.CancelScope:
        return self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The scope swallows only its own cancellation (the deadline): that becomes the error.
        self._scope.__exit__(exc_type, exc, traceback)
        if self._scope.cancelled_caught:
            raise StatementDeadline(self._seconds) from None
