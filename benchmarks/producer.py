"""A producer in a process of its own, for the ``wakeup`` scenario.

An in-process producer notes the time its enqueue returned only once it gets the GIL (or the
event loop) back, and the worker it shares the process with competes for both: the note comes
late, latencies come out too short, some even negative. In a separate process the producer's
note is taken the moment its commit returns. ``time.perf_counter`` is ``CLOCK_MONOTONIC`` on
Linux, one clock for every process on the machine, so the two processes' notes subtract.

Protocol over a pipe: the child sends ``"ready"``; then for every ``True`` it receives it
enqueues one job (committed) and sends back ``time.perf_counter()``; ``False`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from types import TracebackType

STARTUP_TIMEOUT = 60.0


def _pgq_sa(pipe: Connection, url: str, schema: str, task: str) -> None:
    from pgq_sa import Queue
    from pgq_sa._config import make_engine

    engine = make_engine(url)
    queue = Queue(schema=schema)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        pipe.send("ready")
        while pipe.recv():
            queue.enqueue(engine, task)
            pipe.send(time.perf_counter())
    finally:
        engine.dispose()


async def _pgqueuer(pipe: Connection, dsn: str, task: str) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(connection))
        pipe.send("ready")
        while pipe.recv():
            await queries.enqueue(task, None)
            pipe.send(time.perf_counter())
    finally:
        await connection.close()


def _main(pipe: Connection, system: str, url: str, schema: str, task: str) -> None:
    try:
        if system == "pgq_sa":
            _pgq_sa(pipe, url, schema, task)
        else:
            asyncio.run(_pgqueuer(pipe, url, task))
    except EOFError:  # the parent went away
        pass


class ProcessProducer:
    """Enqueue one job at a time from a child process; :meth:`enqueue` returns its commit time.

    ``system`` is ``"pgq_sa"`` (``queue.enqueue`` on a sync Engine, psycopg; ``url`` is a
    SQLAlchemy URL) or ``"pgqueuer"`` (``Queries.enqueue`` on asyncpg; ``url`` is a libpq DSN).
    """

    def __init__(self, system: str, url: str, task: str, schema: str = "") -> None:
        if system not in ("pgq_sa", "pgqueuer"):
            raise ValueError(f"unknown producer {system!r}")
        self._args = (system, url, schema, task)
        self._pipe: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def __enter__(self) -> ProcessProducer:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_main, args=(child, *self._args), name="bench-producer", daemon=True
        )
        process.start()
        child.close()
        self._pipe, self._process = parent, process
        if not parent.poll(STARTUP_TIMEOUT) or parent.recv() != "ready":
            self.__exit__(None, None, None)
            raise RuntimeError("the producer process did not start")
        return self

    def enqueue(self) -> float:
        """Enqueue one job; return ``time.perf_counter()`` right after its commit returned."""
        self.request()
        return self.commit_time()

    def request(self) -> None:
        """Ask for one job, without waiting: :meth:`commit_time` reads when it committed. A
        coordinator that reads it only after the measured event keeps its own process quiet
        while it is measured (no thread of it wakes up to read the answer meanwhile)."""
        assert self._pipe is not None, "use ProcessProducer as a context manager"
        self._pipe.send(True)

    def commit_time(self) -> float:
        """``time.perf_counter()`` right after the requested job's commit returned."""
        assert self._pipe is not None, "use ProcessProducer as a context manager"
        return float(self._pipe.recv())

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        pipe, process = self._pipe, self._process
        self._pipe = self._process = None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.send(False)
            pipe.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join()
