"""PgQueuer peer for the pgq_sa benchmarks: schema install, bulk enqueue and drain.

Everything here goes through PgQueuer's public API (``pgqueuer.Queries``,
``pgqueuer.QueueManager``, ``pgqueuer.AsyncpgDriver`` / ``pgqueuer.PsycopgDriver``),
pinned to PgQueuer 1.6.0, so the figures can be set against pgq_sa's own on the
same database.

* :func:`pgqueuer_install` drops any existing PgQueuer schema, then installs it.
* :func:`pgqueuer_bulk_enqueue` times a single list-valued ``Queries.enqueue`` call.
* :func:`pgqueuer_drain` pre-enqueues ``n`` no-op jobs, then times ``consumers``
  QueueManagers, one connection each, until every job has run and been logged.

Run it directly, e.g.::

    python -m benchmarks.peers.pgqueuer_peer --dsn postgresql://postgres@127.0.0.1/x \
        --what drain --n 30000 --batch-size 10 --driver psycopg
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta
from typing import Any, TypeAlias

import asyncpg
import psycopg
from pgqueuer import AsyncpgDriver, Job, PsycopgDriver, Queries, QueueManager
from pgqueuer.types import QueueExecutionMode

ENTRYPOINT = "noop"


async def pgqueuer_install(dsn: str) -> None:
    """Install PgQueuer's schema into the database at *dsn*, replacing any earlier install."""
    connection = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(connection))
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
) -> float:
    """Drain *n* pre-enqueued no-op jobs with *consumers* QueueManagers; return elapsed seconds.

    The schema must be installed and the queue empty. Each QueueManager gets its own
    connection (asyncpg or psycopg async, per *driver*) and claims *batch_size* jobs
    per dequeue. The clock runs from the start of the consumers until every
    ``QueueManager.run`` has returned, which is after the final completion log flush.

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
    finally:
        await setup.close()

    opened = [await _connect_queries(dsn, driver) for _ in range(consumers)]
    managers = [QueueManager(queries) for queries, _ in opened]
    done = 0

    def stop_all() -> None:
        for manager in managers:
            manager.shutdown.set()

    async def noop(job: Job) -> None:
        nonlocal done
        done += 1
        if done >= n:
            stop_all()

    for manager in managers:
        manager.entrypoint(ENTRYPOINT)(noop)

    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                manager.run(
                    dequeue_timeout=dequeue_timeout,
                    batch_size=batch_size,
                    mode=QueueExecutionMode.drain,
                )
                for manager in managers
            )
        )
        elapsed = time.perf_counter() - started
    finally:
        for _, connection in opened:
            await connection.close()

    if done != n:
        raise RuntimeError(f"handler ran {done} times for {n} jobs")
    check = await asyncpg.connect(dsn)
    try:
        if (leftover := await _queued_total(Queries(AsyncpgDriver(check)))) != 0:
            raise RuntimeError(f"{leftover} jobs left in PgQueuer's queue after the drain")
    finally:
        await check.close()
    return elapsed


async def _main(args: argparse.Namespace) -> None:
    """Reinstall PgQueuer's schema, run the chosen benchmark and print jobs/s."""
    await pgqueuer_install(args.dsn)
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
    parser.add_argument("--n", type=int, default=100_000, help="number of jobs")
    parser.add_argument("--batch-size", type=int, default=10, help="drain: jobs per dequeue")
    parser.add_argument("--consumers", type=int, default=5, help="drain: QueueManager count")
    parser.add_argument("--what", choices=("bulk", "drain"), default="bulk")
    parser.add_argument("--driver", choices=("asyncpg", "psycopg"), default="asyncpg")
    parser.add_argument(
        "--uninstall", action="store_true", help="drop PgQueuer's schema afterwards"
    )
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
