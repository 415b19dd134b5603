"""Live updates: one watcher per app tells every open page that something changed.

The watcher is a thread (so it serves any event loop, and an app mounted inside another one
whose lifespan never reaches it): it LISTENs on the queue's two channels (enqueues, retries,
resumes, cancellations; awaited finishes) and, between notifications, compares a cheap
fingerprint of the queue (:func:`pgq_sa._dashboard.change_marker`) every ``poll_interval``
seconds, since most finishes are not announced. Bursts are debounced into one change at most
every ``min_interval`` seconds. It starts with the first page that listens and stops once none
has listened for a while. Pages receive the changes as server-sent events
(:func:`event_stream`); the browser falls back to polling when the stream breaks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from pgq_sa import _dashboard as dashboard
from pgq_sa._config import make_engine
from pgq_sa._ops.drive import run_sync
from pgq_sa._schema import finished_channel, notify_channel
from pgq_sa._sql import Statements

log = logging.getLogger("pgq_sa.web")

PING_EVERY = 15.0  # seconds: a comment line that keeps proxies from closing an idle stream
CHECK_EVERY = 0.25  # seconds: how often a stream looks at the change counter (memory only)


class Watcher:
    """Counts changes of the queue for the pages that listen."""

    def __init__(
        self,
        url: URL,
        statements: Statements,
        *,
        poll_interval: float = 2.0,
        min_interval: float = 1.0,
        idle_stop: float = 30.0,
        listen: bool = True,
    ) -> None:
        self._url = url
        self._statements = statements
        self.poll_interval = poll_interval
        self.min_interval = min_interval
        self.idle_stop = idle_stop
        self.listen = listen
        self.version = 0
        self.mode = "starting"  # "listen" (NOTIFY and polling), "poll", or "blind" (no reads)
        self._lock = threading.Lock()
        self._listeners = 0
        self._last_listener = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- the pages' side -----------------------------------------------------------------------

    def attach(self) -> None:
        with self._lock:
            self._listeners += 1
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="pgq-sa-web-watcher", daemon=True
                )
                self._thread.start()

    def detach(self) -> None:
        with self._lock:
            self._listeners -= 1
            self._last_listener = time.monotonic()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # --- the thread ----------------------------------------------------------------------------

    def _idle(self) -> bool:
        with self._lock:
            idle = self._listeners <= 0 and time.monotonic() - self._last_listener > self.idle_stop
            if idle:
                self._thread = None
            return idle

    def _run(self) -> None:
        engine = make_engine(self._url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        listener = self._connect_listener()
        marker: tuple[Any, ...] | None = None
        last_change = 0.0
        pending = False
        try:
            while not self._stop.is_set() and not self._idle():
                heard = self._wait(listener, self.poll_interval)
                if heard is None:  # the LISTEN link broke: poll only, try again later
                    listener = None
                pending = pending or bool(heard)
                current = self._marker(engine)
                if current is None or current != marker:
                    pending = pending or marker is not None or current is None
                    marker = current
                if pending and time.monotonic() - last_change >= self.min_interval:
                    time.sleep(0.1 if heard else 0)  # debounce a burst's tail
                    self.version += 1
                    last_change = time.monotonic()
                    pending = False
                if listener is None and self.listen:
                    listener = self._connect_listener()
        finally:
            if listener is not None:
                listener.close()
            engine.dispose()

    def _connect_listener(self) -> Any:
        if not self.listen:
            return None
        from pgq_sa._notifications import ListenConnection

        schema = self._statements.tables.schema
        listener = ListenConnection(self._url, [notify_channel(schema), finished_channel(schema)])
        try:
            listener.connect()
        except Exception as error:  # a pooler without LISTEN, a refused role, a network error
            log.info("live updates without LISTEN (polling only): %s", error)
            return None
        return listener

    def _wait(self, listener: Any, timeout: float) -> bool | None:
        """Block up to ``timeout``; True if notified, None if the LISTEN link broke."""
        if listener is None:
            self._stop.wait(timeout)
            return False
        try:
            return bool(listener.wait(timeout))
        except Exception:
            listener.close()
            return None

    def _marker(self, engine: Engine) -> tuple[Any, ...] | None:
        try:
            marker: tuple[Any, ...] = run_sync(engine, dashboard.change_marker(self._statements))
        except SQLAlchemyError as error:  # no SELECT, or the database is away: refresh blindly
            self.mode = "blind"
            log.debug("live updates cannot read the change marker: %s", error)
            return None
        self.mode = "listen" if self.listen else "poll"
        return marker


async def event_stream(watcher: Watcher) -> AsyncIterator[str]:
    """Server-sent events: ``change`` whenever the watcher counts one, a ping now and then."""
    watcher.attach()
    try:
        seen = watcher.version
        yield "retry: 3000\nevent: hello\ndata: ok\n\n"
        quiet = 0.0
        while True:
            await anyio.sleep(CHECK_EVERY)
            quiet += CHECK_EVERY
            if watcher.version != seen:
                seen = watcher.version
                quiet = 0.0
                yield f"event: change\ndata: {seen}\n\n"
            elif quiet >= PING_EVERY:
                quiet = 0.0
                yield ": ping\n\n"
    finally:
        watcher.detach()
