"""PgQueuer peer for the pgq_sa benchmarks: schema install, bulk enqueue and drain.

Everything here goes through PgQueuer's public API (``pgqueuer.Queries``,
``pgqueuer.QueueManager``, ``pgqueuer.AsyncpgDriver`` / ``pgqueuer.PsycopgDriver``),
pinned to PgQueuer 1.6.0, so the figures can be set against pgq_sa's own on the
same database.

* :func:`pgqueuer_install` drops any existing PgQueuer schema, then installs it.
* :func:`pgqueuer_bulk_enqueue` times a single list-valued ``Queries.enqueue`` call.
* :func:`pgqueuer_drain` pre-enqueues ``n`` no-op jobs (optionally ANALYZEs the queue table),
  then times ``consumers`` QueueManagers, one connection each, until every job has run and been
  logged; it then checks that ``n`` jobs were logged ``successful``.
* :func:`pgqueuer_wakeup` measures the delay from an enqueue's commit to the start of its
  handler on an idle QueueManager.

Run it directly, e.g.::

    python -m benchmarks.peers.pgqueuer_peer --dsn postgresql://postgres@127.0.0.1/x \
        --what drain --n 30000 --batch-size 10 --driver psycopg
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeAlias

import asyncpg
import psycopg
from pgqueuer import AsyncpgDriver, Job, PsycopgDriver, Queries, QueueManager
from pgqueuer.adapters.persistence.qb import QueryBuilderEnvironment
from pgqueuer.domain.settings import DBSettings, Durability
from pgqueuer.types import QueueExecutionMode

ENTRYPOINT = "noop"
PING = "ping"


async def pgqueuer_install(dsn: str, durability: str = "durable") -> None:
    """Install PgQueuer's schema into the database at *dsn* at one of its durability levels
    (``volatile``: every table UNLOGGED; ``balanced``: its log and statistics tables UNLOGGED;
    ``durable``), replacing any earlier install."""
    connection = await asyncpg.connect(dsn)
    try:
        settings = DBSettings(durability=Durability(durability))
        environment = QueryBuilderEnvironment(settings=settings)
        queries = Queries(AsyncpgDriver(connection), qbe=environment)
        if await queries.schema_is_installed():
            await queries.uninstall()
        await queries.install()
    finally:
        await connection.close()


async def pgqueuer_uninstall(dsn: str) -> None:
    """Drop every PgQueuer object from the database at *dsn*."""
    connection = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(connection)).uninstall()
    finally:
        await connection.close()


async def _enqueue_noops(queries: Queries, n: int) -> float:
    """Enqueue *n* no-op jobs in one list-valued call; return the seconds it took."""
    entrypoints = [ENTRYPOINT] * n
    payloads: list[bytes | None] = [None] * n
    priorities = [0] * n
    started = time.perf_counter()
    ids = await queries.enqueue(entrypoints, payloads, priorities)
    elapsed = time.perf_counter() - started
    if len(ids) != n:
        raise RuntimeError(f"PgQueuer returned {len(ids)} job ids for {n} jobs")
    return elapsed


async def _queued_total(queries: Queries) -> int:
    """Count the rows in PgQueuer's queue table, whatever their status."""
    return sum(row.count for row in await queries.queue_size())


def queue_table() -> str:
    """The name of PgQueuer's queue table (``pgqueuer`` unless ``PGQUEUER_*`` says otherwise)."""
    return str(DBSettings().queue_table)


def log_table() -> str:
    return str(DBSettings().queue_table_log)


async def pgqueuer_successful(dsn: str) -> int:
    """How many jobs PgQueuer's log records as ``successful``."""
    connection = await asyncpg.connect(dsn)
    try:
        count = await connection.fetchval(
            f"SELECT count(*) FROM {log_table()} WHERE status = 'successful'"
        )
    finally:
        await connection.close()
    return int(count)


async def pgqueuer_span(dsn: str) -> float:
    """Seconds from the first ``picked`` to the last ``successful`` entry of PgQueuer's log."""
    connection = await asyncpg.connect(dsn)
    try:
        seconds = await connection.fetchval(
            "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
            f" - min(created) FILTER (WHERE status = 'picked')) FROM {log_table()}"
        )
    finally:
        await connection.close()
    return float(seconds)


async def pgqueuer_bulk_enqueue(dsn: str, n: int) -> float:
    """Enqueue *n* jobs with one ``Queries.enqueue`` call; return its elapsed seconds.

    Connection setup is outside the timed region; the schema must already be installed.
    """
    connection = await asyncpg.connect(dsn)
    try:
        return await _enqueue_noops(Queries(AsyncpgDriver(connection)), n)
    finally:
        await connection.close()


Connection: TypeAlias = "asyncpg.Connection | psycopg.AsyncConnection[Any]"


async def _connect_queries(dsn: str, driver: str) -> tuple[Queries, Connection]:
    """Open one connection with *driver* and wrap it in PgQueuer's matching driver."""
    if driver == "asyncpg":
        apg = await asyncpg.connect(dsn)
        return Queries(AsyncpgDriver(apg)), apg
    if driver == "psycopg":
        # PsycopgDriver refuses connections without autocommit.
        pg = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return Queries(PsycopgDriver(pg)), pg
    raise ValueError(f"unknown driver {driver!r}; expected 'asyncpg' or 'psycopg'")


async def pgqueuer_drain(
    dsn: str,
    n: int,
    batch_size: int,
    consumers: int = 5,
    driver: str = "asyncpg",
    dequeue_timeout: timedelta = timedelta(seconds=5),
    analyze: bool = False,
    progress: list[int] | None = None,
    timeout: float | None = None,
) -> float:
    """Drain *n* pre-enqueued no-op jobs with *consumers* QueueManagers; return elapsed seconds.

    The schema must be installed and the queue empty. Each QueueManager gets its own
    connection (asyncpg or psycopg async, per *driver*) and claims *batch_size* jobs
    per dequeue. The clock runs from the start of the consumers until every
    ``QueueManager.run`` has returned, which is after the final completion log flush.
    With *analyze* the queue table is ANALYZEd after the enqueue (outside the clock).
    *progress*, if given, is a one-item list the handler keeps at the number of jobs run
    (for a progress bar polling from another thread). Afterwards the log must hold *n*
    ``successful`` entries. With *timeout*, a drain still running after that many seconds
    is cancelled with ``TimeoutError``.

    The managers run in drain mode, but drain mode alone can leave the last one
    waiting out ``dequeue_timeout`` while its final jobs finish, so the handler also
    counts jobs and sets every manager's ``shutdown`` event once all *n* have run.
    """
    if driver not in ("asyncpg", "psycopg"):
        raise ValueError(f"unknown driver {driver!r}; expected 'asyncpg' or 'psycopg'")

    setup = await asyncpg.connect(dsn)
    try:
        setup_queries = Queries(AsyncpgDriver(setup))
        if (leftover := await _queued_total(setup_queries)) != 0:
            raise RuntimeError(f"PgQueuer queue is not empty ({leftover} rows); reinstall first")
        await _enqueue_noops(setup_queries, n)
        if analyze:
            await setup.execute(f"ANALYZE {queue_table()}")
    finally:
        await setup.close()

    opened = [await _connect_queries(dsn, driver) for _ in range(consumers)]
    managers = [QueueManager(queries) for queries, _ in opened]
    counter = progress if progress is not None else [0]
    counter[0] = 0

    def stop_all() -> None:
        for manager in managers:
            manager.shutdown.set()

    async def noop(job: Job) -> None:
        counter[0] += 1
        if counter[0] >= n:
            stop_all()

    for manager in managers:
        manager.entrypoint(ENTRYPOINT)(noop)

    try:
        started = time.perf_counter()
        runs = asyncio.gather(
            *(
                manager.run(
                    dequeue_timeout=dequeue_timeout,
                    batch_size=batch_size,
                    mode=QueueExecutionMode.drain,
                )
                for manager in managers
            )
        )
        await asyncio.wait_for(runs, timeout)
        elapsed = time.perf_counter() - started
    finally:
        for _, connection in opened:
            await connection.close()

    if counter[0] != n:
        raise RuntimeError(f"handler ran {counter[0]} times for {n} jobs")
    check = await asyncpg.connect(dsn)
    try:
        if (leftover := await _queued_total(Queries(AsyncpgDriver(check)))) != 0:
            raise RuntimeError(f"{leftover} jobs left in PgQueuer's queue after the drain")
    finally:
        await check.close()
    if (logged := await pgqueuer_successful(dsn)) != n:
        raise RuntimeError(f"PgQueuer logged {logged} successful jobs for {n}")
    return elapsed


async def pgqueuer_wakeup(
    dsn: str,
    samples: int,
    *,
    batch_size: int = 10,
    gap: float = 0.05,
    settle: float = 1.0,
    timeout: float = 10.0,
    enqueue: Callable[[], Awaitable[Callable[[], float]]] | None = None,
) -> list[float]:
    """Seconds from each enqueue's commit to its handler's start, on an idle QueueManager.

    One QueueManager (asyncpg, continuous mode, PgQueuer's default ``dequeue_timeout``) is
    started and left idle for *settle* seconds. Then, *samples* times: the producer, on a
    connection of its own in the same event loop, enqueues one job with ``Queries.enqueue``
    (autocommit, so the call returns after the commit) and notes ``time.perf_counter()``;
    the handler notes ``time.perf_counter()`` as it starts and sets an event the producer
    waits for; then *gap* seconds of idleness before the next job.

    *enqueue*, if given, replaces the in-loop producer: it must have one ``ping`` job enqueued
    (committed) somewhere else, e.g. in another process, and return a function that gives the
    ``time.perf_counter()`` noted right after that commit returned; it is called once the
    handler has started.
    """
    worker_connection = await asyncpg.connect(dsn)
    producer_connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(worker_connection)))
    producer = Queries(AsyncpgDriver(producer_connection))
    started: list[float] = []
    arrived = asyncio.Event()

    @manager.entrypoint(PING)
    async def ping(job: Job) -> None:
        started.append(time.perf_counter())
        arrived.set()

    running = asyncio.create_task(manager.run(batch_size=batch_size))
    latencies: list[float] = []
    try:
        await asyncio.sleep(settle)
        for _ in range(samples):
            if running.done():
                running.result()
                raise RuntimeError("the QueueManager stopped early")
            arrived.clear()
            if enqueue is not None:
                commit_time = await enqueue()
            else:
                await producer.enqueue(PING, None)
                commit_time = _noted(time.perf_counter())
            await asyncio.wait_for(arrived.wait(), timeout)
            latencies.append(started[-1] - commit_time())
            await asyncio.sleep(gap)
    finally:
        manager.shutdown.set()
        try:
            await asyncio.wait_for(running, 30)
        finally:
            await worker_connection.close()
            await producer_connection.close()
    return latencies


def _noted(moment: float) -> Callable[[], float]:
    return lambda: moment


async def _main(args: argparse.Namespace) -> None:
    """Reinstall PgQueuer's schema, run the chosen benchmark and print jobs/s."""
    await pgqueuer_install(args.dsn)
    if args.what == "wakeup":
        latencies = sorted(await pgqueuer_wakeup(args.dsn, args.n, batch_size=args.batch_size))
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        print(f"pgqueuer wakeup n={args.n}: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
        if args.uninstall:
            await pgqueuer_uninstall(args.dsn)
        return
    if args.what == "bulk":
        elapsed = await pgqueuer_bulk_enqueue(args.dsn, args.n)
        label = f"pgqueuer bulk enqueue n={args.n}"
    else:
        elapsed = await pgqueuer_drain(
            args.dsn, args.n, args.batch_size, consumers=args.consumers, driver=args.driver
        )
        label = (
            f"pgqueuer drain n={args.n} batch={args.batch_size} "
            f"consumers={args.consumers} driver={args.driver}"
        )
    print(f"{label}: {elapsed:.3f} s, {args.n / elapsed:,.0f} jobs/s")
    if args.uninstall:
        await pgqueuer_uninstall(args.dsn)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True, help="libpq DSN of a scratch database")
    parser.add_argument("--n", type=int, default=100_000, help="number of jobs (wakeup: samples)")
    parser.add_argument("--batch-size", type=int, default=10, help="drain: jobs per dequeue")
    parser.add_argument("--consumers", type=int, default=5, help="drain: QueueManager count")
    parser.add_argument("--what", choices=("bulk", "drain", "wakeup"), default="bulk")
    parser.add_argument("--driver", choices=("asyncpg", "psycopg"), default="asyncpg")
    parser.add_argument(
        "--uninstall", action="store_true", help="drop PgQueuer's schema afterwards"
    )
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
