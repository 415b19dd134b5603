"""pgq_sa's side of every scenario: no-op queues, warm engines, and a timed drain per worker kind.

Kinds: ``threads`` (:class:`~pgq_sa.ThreadWorker`, a sync ``def`` no-op) and ``asyncio`` / ``trio``
(:class:`~pgq_sa.AsyncWorker` under ``anyio.run``, an ``async def`` no-op). The in-flight budget
is five times the claim batch: ``threads=min(5*B, 200)`` or ``concurrency=5*B``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.to_thread
import sniffio
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.scratch_databases import warm
from pgq_sa import AsyncWorker, JobSpec, Queue, ThreadWorker
from pgq_sa._config import make_async_engine, make_engine
from pgq_sa._job import Job

KINDS = ("threads", "asyncio", "trio")
NOOP = "noop"
MAX_THREADS = 200
BUDGET_FACTOR = 5


def budget(kind: str, batch_size: int) -> int:
    """Handler threads or concurrency for ``kind`` at claim batch ``batch_size``."""
    size = BUDGET_FACTOR * batch_size
    return min(size, MAX_THREADS) if kind == "threads" else size


def describe(kind: str, batch_size: int) -> str:
    """``threads, batch 10 (50 threads)``: the worker as configured."""
    unit = "threads" if kind == "threads" else "concurrency"
    return f"{kind}, batch {batch_size} ({unit} {budget(kind, batch_size)})"


def noop_queue(schema: str, kind: str, task: str = NOOP) -> Queue:
    """A queue on ``schema`` whose only task is a no-op: ``def`` for threads, ``async def`` else."""
    queue = Queue(schema=schema)
    if kind == "threads":

        @queue.task(task)
        def noop(job: Job) -> None:
            return None

    else:

        @queue.task(task)
        async def noop_async(job: Job) -> None:
            return None

    return queue


def enqueue_noops(queue: Queue, engine: Engine, count: int, chunk: int = 50_000) -> None:
    """Enqueue ``count`` no-op jobs with ``enqueue_many`` (chunks of ``chunk``)."""
    done = 0
    while done < count:
        size = min(chunk, count - done)
        queue.enqueue_many(engine, [JobSpec(NOOP) for _ in range(size)])
        done += size


class Watched:
    """Something the progress bar can poll: a worker's ``processed`` count, once it exists."""

    def __init__(self) -> None:
        self.worker: ThreadWorker | AsyncWorker | None = None

    def count(self) -> int:
        worker = self.worker
        return worker.processed if worker is not None else 0


def deadline_for(jobs: int) -> float:
    """Seconds after which a drain counts as hung: generous, at least 20 jobs/s."""
    return max(300.0, jobs / 20)


class DrainTimeout(RuntimeError):
    """The worker did not finish within the deadline and was stopped."""


def run_in_thread(
    run: Callable[[], None], stop: Callable[[], None], deadline: float, kind: str
) -> None:
    """Call ``run`` in a thread of its own while the main thread waits for it.

    Off the main thread the workers install no signal handlers, so Ctrl-C reaches the
    benchmark (which stops the worker, then drops its scratch database) instead of only
    stopping the worker. A worker still running after ``deadline`` seconds is stopped and
    :class:`DrainTimeout` raised, so a hung worker cannot hang the benchmark.
    """
    failure: list[BaseException] = []

    def body() -> None:
        try:
            run()
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=body, name=f"bench-{kind}-worker", daemon=True)
    thread.start()
    try:
        thread.join(deadline)
    except KeyboardInterrupt:
        stop()
        thread.join(60)
        raise
    if thread.is_alive():
        stop()
        thread.join(60)
        raise DrainTimeout(f"the {kind} worker was still running after {deadline:g} s; stopped it")
    if failure:
        raise failure[0]


def drain(
    kind: str,
    queue: Queue,
    url: URL,
    engine: Engine,
    batch_size: int,
    watched: Watched | None = None,
    deadline: float = 300.0,
    *,
    until_empty: bool = True,
) -> float:
    """Run a ``kind`` worker until nothing is left; return the seconds ``run()`` took.

    The worker runs in a thread of its own (see :func:`run_in_thread`); the clock runs in
    that thread, from the ``run()`` call until it returns. With ``until_empty=False`` it runs
    until ``watched.worker.stop()`` (or the deadline).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown worker kind {kind!r}; expected one of {', '.join(KINDS)}")
    elapsed: list[float] = []
    workers: list[ThreadWorker | AsyncWorker] = []

    def stop() -> None:
        for worker in workers:
            worker.stop()

    if kind == "threads":
        warm(engine)
        thread_worker = ThreadWorker(
            queue, engine, threads=budget(kind, batch_size), batch_size=batch_size
        )
        workers.append(thread_worker)
        if watched is not None:
            watched.worker = thread_worker

        def run() -> None:
            started = time.perf_counter()
            thread_worker.run(until_empty=until_empty)
            elapsed.append(time.perf_counter() - started)

    else:

        async def main() -> None:
            async with _async_bind(url, engine) as bind:
                async_worker = AsyncWorker(
                    queue, bind, concurrency=budget(kind, batch_size), batch_size=batch_size
                )
                workers.append(async_worker)
                if watched is not None:
                    watched.worker = async_worker
                started = time.perf_counter()
                await async_worker.run(until_empty=until_empty)
                elapsed.append(time.perf_counter() - started)

        def run() -> None:
            anyio.run(main, backend=kind)

    run_in_thread(run, stop, deadline, kind)
    return elapsed[0]


def user_url(url: URL) -> URL:
    """The scratch URL names psycopg (for the sync engine); a driverless URL is what a user
    passes, and what makes ``AsyncWorker`` pick asyncpg on asyncio, as PgQueuer uses."""
    return url.set(drivername="postgresql")


@contextlib.asynccontextmanager
async def _async_bind(url: URL, engine: Engine) -> AsyncIterator[AsyncEngine | Engine]:
    """What ``AsyncWorker(queue, url)`` would build for itself, built and warmed up front.

    On asyncio an AsyncEngine (asyncpg); on trio the sync Engine, which the worker runs in
    threads. Either way the connections exist before the clock starts, as PgQueuer's do.
    """
    if sniffio.current_async_library() == "asyncio":
        async_engine = make_async_engine(user_url(url))
        try:
            await warm_async(async_engine)
            yield async_engine
        finally:
            await async_engine.dispose()
    else:
        await anyio.to_thread.run_sync(warm, engine)
        yield engine


async def warm_async(engine: AsyncEngine, connections: int = 3) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(connections):
            connection = await stack.enter_async_context(engine.connect())
            await connection.exec_driver_sql("SELECT 1")


@contextlib.contextmanager
def producer_engine(url: URL) -> Iterator[Engine]:
    """A separate sync engine for a producer, disposed afterwards."""
    engine = make_engine(url)
    try:
        warm(engine, 1)
        yield engine
    finally:
        engine.dispose()
