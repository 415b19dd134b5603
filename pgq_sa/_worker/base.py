"""What both workers are before they run: the queue, validated options, an identity, stop().

The drivers subclass :class:`Worker` with their own constructor signature (``threads=`` or
``concurrency=``) and their way of running the core; everything else a user touches on a worker
(``id``, ``processed``, ``stop()``, the start-up log line) is here, once.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from functools import partial
from typing import ClassVar, Protocol

from sqlalchemy.engine import URL

from pgq_sa._config import parse_url
from pgq_sa._errors import ConfigurationError, explain
from pgq_sa._ops.worker import Identity
from pgq_sa._queue import Queue
from pgq_sa._worker.core import Runtime, WorkerCore
from pgq_sa._worker.options import WorkerOptions

log = logging.getLogger("pgq_sa.worker")


class _Driver(Protocol):
    def stop(self, *, force: bool = False) -> None: ...


class Worker:
    """The part of ThreadWorker and AsyncWorker that does not depend on how they wait."""

    kind: ClassVar[str]

    def __init__(
        self, queue: Queue, options: WorkerOptions, name: str | None, handle_signals: bool
    ) -> None:
        self.queue = queue
        self.options = options
        self.identity = Identity.new(self.kind, name)
        # False when the host (a web server) owns SIGINT/SIGTERM and calls stop() itself.
        self._handle_signals = handle_signals
        self._stop_requested = threading.Event()
        self._core: WorkerCore | None = None
        self._driver: _Driver | None = None  # while it runs

    def stop(self) -> None:
        """Stop claiming and let running jobs finish (within ``shutdown_timeout``); safe from any
        thread, and before ``run()`` (which then returns at once)."""
        self._stop_requested.set()
        driver = self._driver
        if driver is not None:
            driver.stop()

    @property
    def id(self) -> uuid.UUID:
        """The worker's id in the workers table (a new one if it had to register again)."""
        return self._core.worker_id if self._core is not None else self.identity.id

    @property
    def processed(self) -> int:
        """How many outcomes this worker has written."""
        return self._core.processed if self._core is not None else 0

    def _new_core(self, runtime: Runtime, until_empty: bool, url: URL) -> WorkerCore:
        core = WorkerCore(self.queue, self.options, self.identity, runtime, until_empty)
        core.explain = partial(explain, schema=self.queue.schema, url=url)
        if self._stop_requested.is_set():
            core.begin_stop()
        self._core = core
        return core

    def _signalled(self, signum: int) -> bool:
        """SIGINT or SIGTERM arrived: the first stops gracefully; after a stop was asked, one
        more stops now (returns True: running jobs are interrupted at once)."""
        name = signal.Signals(signum).name
        if self._stop_requested.is_set():
            log.warning("second %s: stopping now", name)
            return True
        self._stop_requested.set()
        log.info("%s: finishing running jobs, then stopping", name)
        return False

    def _refuse_transaction_pooling(self, warning: str | None) -> None:
        """A worker behind a transaction-pooling PgBouncer would lose its NOTIFY wake-ups and
        leak its session settings to other clients: it refuses to start, and says the fix."""
        if warning is not None:
            raise ConfigurationError(warning)

    def _started(self, runtime: str, database: str, driver: str, bind: object) -> None:
        """Say where the worker runs, and on which driver: a URL naming another driver than the
        one a worker runs on (workers run on psycopg, or asyncpg on asyncio, when given a URL)
        is said, never followed silently."""
        note = ""
        if isinstance(bind, (str, URL)):
            url = parse_url(bind)
            named = url.get_driver_name() if "+" in url.drivername else ""
            if named and named != driver:
                note = (
                    f"; the URL names {named}, but workers given a URL run on {driver} "
                    "(pass an Engine of your own to run on another driver)"
                )
        log.info(
            "worker %s started on %s (%s%s): %d %s, tasks %s",
            self.identity.name,
            runtime,
            database,
            note,
            self.options.capacity,
            "threads" if self.kind == "threads" else "at once",
            ", ".join(self.options.task_names),
        )
