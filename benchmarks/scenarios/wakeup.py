"""``wakeup``: how long an idle worker takes to start a job after the enqueue commits.

The worker is started, seen registered in the workers table, and left idle for a second. Then,
once per sample, the producer enqueues one job and notes ``time.perf_counter()`` as soon as the
enqueue (and so its commit) returns; the handler notes ``time.perf_counter()`` as it starts and
sets an event (``threading.Event`` / ``anyio.Event``) the coordinator waits on; latency =
handler start - commit returned. A short idle gap separates samples so each one measures a
worker that was waiting, not one still busy finishing the previous job.

Producers (``--producer``):

* ``process`` (default): a child process (:mod:`benchmarks.producer`) - ``queue.enqueue`` on a
  sync Engine for pgq_sa, ``Queries.enqueue`` on asyncpg for PgQueuer. Its clock note is not
  delayed by the worker's threads or event loop, and the coordinator reads it only once the
  handler has started: nothing in the measured process wakes up to read it meanwhile (a thread
  doing so competes with the worker for the GIL and its event loop, inside the measured window).
* ``inline``: in the worker's process - the main thread with ``queue.enqueue`` on a sync Engine
  (threads), ``enqueue_async`` on an AsyncEngine in the worker's loop (asyncio), on a sync
  Engine in the loop (trio), ``Queries.enqueue`` on a second asyncpg connection (PgQueuer). The
  note can come late, so latencies read short (even negative).

PgQueuer: one idle QueueManager, asyncpg, batch 10, its default ``dequeue_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import anyio
import anyio.to_thread
from sqlalchemy import Engine, text

from benchmarks import machine, ours
from benchmarks.context import Context
from benchmarks.peers import pgqueuer_peer as peer
from benchmarks.producer import ProcessProducer
from benchmarks.report import PEER, Result, print_results
from benchmarks.scratch_databases import warm
from benchmarks.stats import percentile
from pgq_sa import AsyncWorker, Queue, ThreadWorker
from pgq_sa._config import make_async_engine, make_engine
from pgq_sa._job import Job

PING = peer.PING
PERCENTILES = (50, 90, 99)
SAMPLE_TIMEOUT = 10.0
PRODUCERS = ("process", "inline")


def _wait_registered(engine: Engine, schema: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(text(f"SELECT count(*) FROM {schema}.workers")).scalar():
                return
        time.sleep(0.01)
    raise RuntimeError(f"no worker registered in {schema} within {timeout:g} s")


def _url_text(context: Context) -> str:
    return context.url.render_as_string(hide_password=False)


CommitTime = Callable[[], float]  # read after the handler started: when the enqueue committed


def _noted(moment: float) -> CommitTime:
    return lambda: moment


@contextlib.contextmanager
def _sync_enqueue(
    context: Context, queue: Queue, producer: str
) -> Iterator[Callable[[], CommitTime]]:
    """A blocking ``enqueue() -> commit time`` for the thread worker's coordinator."""
    if producer == "process":
        with ProcessProducer("pgq_sa", _url_text(context), PING, queue.schema) as child:

            def request() -> CommitTime:
                child.request()
                return child.commit_time

            yield request
        return
    engine = make_engine(context.url)
    try:
        warm(engine, 1)

        def enqueue() -> CommitTime:
            queue.enqueue(engine, PING)
            return _noted(time.perf_counter())

        yield enqueue
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def _async_enqueue(
    context: Context, queue: Queue, kind: str, producer: str
) -> AsyncIterator[Callable[[], Awaitable[CommitTime]]]:
    """An awaitable ``enqueue() -> commit time`` inside the async worker's event loop."""
    if producer == "process":
        with ProcessProducer("pgq_sa", _url_text(context), PING, queue.schema) as child:

            async def from_child() -> CommitTime:
                child.request()
                return child.commit_time

            yield from_child
        return
    bind: Engine | object
    if kind == "asyncio":
        async_engine = make_async_engine(context.url)
        await ours.warm_async(async_engine, 1)
        bind, dispose = async_engine, async_engine.dispose
    else:
        sync_engine = make_engine(context.url)
        await anyio.to_thread.run_sync(warm, sync_engine, 1)

        async def dispose() -> None:
            sync_engine.dispose()

        bind = sync_engine
    try:

        async def enqueue() -> CommitTime:
            await queue.enqueue_async(bind, PING)
            return _noted(time.perf_counter())

        yield enqueue
    finally:
        await dispose()


def _threads(
    context: Context, samples: int, batch_size: int, gap: float, idle: float, producer: str
) -> list[float]:
    schema = "bench_wakeup_threads"
    with context.queue_schema(schema):
        queue = Queue(schema=schema)
        started: list[float] = []
        arrived = threading.Event()

        @queue.task(PING)
        def ping(job: Job) -> None:
            started.append(time.perf_counter())
            arrived.set()

        worker = ThreadWorker(
            queue, context.url, threads=ours.budget("threads", batch_size), batch_size=batch_size
        )
        failure: list[BaseException] = []

        def work() -> None:
            try:
                worker.run()
            except BaseException as error:
                failure.append(error)
                raise

        latencies: list[float] = []
        with _sync_enqueue(context, queue, producer) as enqueue:
            thread = threading.Thread(target=work, name="bench-wakeup-worker", daemon=True)
            thread.start()
            try:
                _wait_registered(context.engine, schema)
                time.sleep(idle)
                for _ in range(samples):
                    if failure:
                        raise RuntimeError("the worker stopped") from failure[0]
                    arrived.clear()
                    commit_time = enqueue()
                    if not arrived.wait(SAMPLE_TIMEOUT):
                        raise RuntimeError(f"a job did not start within {SAMPLE_TIMEOUT:g} s")
                    latencies.append(started[-1] - commit_time())
                    time.sleep(gap)
            finally:
                worker.stop()
                thread.join(60)
    return latencies


def _async(
    context: Context,
    kind: str,
    samples: int,
    batch_size: int,
    gap: float,
    idle: float,
    producer: str,
) -> list[float]:
    schema = f"bench_wakeup_{kind}"
    latencies: list[float] = []
    with context.queue_schema(schema):
        queue = Queue(schema=schema)
        started: list[float] = []
        arrived: list[anyio.Event] = []

        @queue.task(PING)
        async def ping(job: Job) -> None:
            started.append(time.perf_counter())
            arrived[-1].set()

        worker = AsyncWorker(
            queue,
            ours.user_url(context.url),
            concurrency=ours.budget(kind, batch_size),
            batch_size=batch_size,
        )

        async def main() -> None:
            async with (
                _async_enqueue(context, queue, kind, producer) as enqueue,
                anyio.create_task_group() as group,
            ):
                group.start_soon(worker.run)
                await anyio.to_thread.run_sync(_wait_registered, context.engine, schema)
                await anyio.sleep(idle)
                for _ in range(samples):
                    arrived.append(anyio.Event())
                    commit_time = await enqueue()
                    with anyio.fail_after(SAMPLE_TIMEOUT):
                        await arrived[-1].wait()
                    latencies.append(started[-1] - commit_time())
                    await anyio.sleep(gap)
                worker.stop()

        deadline = 120 + samples * (SAMPLE_TIMEOUT + gap)
        ours.run_in_thread(lambda: anyio.run(main, backend=kind), worker.stop, deadline, kind)
    return latencies


def measure_ours(
    context: Context,
    kind: str,
    samples: int,
    batch_size: int,
    gap: float,
    idle: float,
    producer: str,
) -> list[float]:
    label = f"wakeup pgq_sa {ours.describe(kind, batch_size)}, {samples} samples, {producer}"
    cpu_before = machine.cpu_sample()
    with context.progress.step(label):
        if kind == "threads":
            latencies = _threads(context, samples, batch_size, gap, idle, producer)
        else:
            latencies = _async(context, kind, samples, batch_size, gap, idle, producer)
    _summary(context, latencies, machine.steal_since(cpu_before))
    return latencies


def measure_peer(
    context: Context, samples: int, batch_size: int, gap: float, idle: float, producer: str
) -> list[float]:
    label = f"wakeup {PEER} asyncpg, batch {batch_size}, {samples} samples, {producer}"
    cpu_before = machine.cpu_sample()
    with context.progress.step(label):
        asyncio.run(peer.pgqueuer_install(context.dsn, context.durability))
        try:
            with contextlib.ExitStack() as stack:
                enqueue: Callable[[], Awaitable[CommitTime]] | None = None
                if producer == "process":
                    child = stack.enter_context(ProcessProducer("pgqueuer", context.dsn, PING))

                    async def from_child() -> CommitTime:
                        child.request()
                        return child.commit_time

                    enqueue = from_child
                latencies = asyncio.run(
                    peer.pgqueuer_wakeup(
                        context.dsn,
                        samples,
                        batch_size=batch_size,
                        gap=gap,
                        settle=idle,
                        enqueue=enqueue,
                    )
                )
        finally:
            asyncio.run(peer.pgqueuer_uninstall(context.dsn))
    _summary(context, latencies, machine.steal_since(cpu_before))
    return latencies


def _summary(context: Context, latencies: Sequence[float], steal: str) -> None:
    figures = ", ".join(f"p{p} {percentile(latencies, p) * 1000:.2f} ms" for p in PERCENTILES)
    negative = sum(1 for value in latencies if value < 0)
    context.progress.line(
        f"    {figures}; min {min(latencies) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms"
        + (f"; {negative} negative" if negative else "")
        + (f"; {steal}" if steal else "")
    )


def run(
    context: Context,
    *,
    samples: int,
    kinds: Sequence[str],
    peer_name: str | None,
    batch_size: int = 10,
    gap: float = 0.05,
    idle: float = 1.0,
    producer: str = "process",
    rounds: int = 1,
    show: bool = True,
) -> list[Result]:
    """``samples`` wake-ups per worker kind (and PgQueuer), taken in ``rounds`` rounds.

    With several rounds each system gets its share of the samples in every round, with a fresh
    worker each time, so a burst of CPU steal lands on all systems alike instead of on whichever
    happened to be measuring.
    """
    mine: dict[str, list[float]] = {kind: [] for kind in kinds}
    theirs: list[float] | None = [] if peer_name == "pgqueuer" else None
    shares = [samples // rounds + (1 if r < samples % rounds else 0) for r in range(rounds)]
    for share in shares:
        for kind in kinds:
            mine[kind] += measure_ours(context, kind, share, batch_size, gap, idle, producer)
        if theirs is not None:
            theirs += measure_peer(context, share, batch_size, gap, idle, producer)
    results = []
    for kind in kinds:
        for p in PERCENTILES:
            reference = percentile(theirs, p) * 1000 if theirs else None
            results.append(
                Result(
                    benchmark=f"wakeup ({producer} producer)",
                    case=f"{ours.describe(kind, batch_size)} p{p}",
                    metric="ms",
                    value=percentile(mine[kind], p) * 1000,
                    reference=reference,
                    reference_label=f"{PEER} asyncpg p{p}" if theirs else "",
                )
            )
    if show:
        print_results(
            f"wakeup: commit -> handler start on an idle worker, {samples} samples "
            f"in {rounds} round(s), {producer} producer",
            results,
        )
    return results
