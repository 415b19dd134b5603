"""``bulk``: one ``queue.enqueue_many(engine, specs)`` of N jobs, repeated; median jobs/s.

Only the call is timed: building the ``JobSpec`` list is not, validating it inside
``enqueue_many`` is, and so are the INSERT and its commit (an Engine commits on its own). Each
repeat starts from an empty jobs table. PgQueuer's figure is one list-valued ``Queries.enqueue``
on asyncpg (``pgqueuer_bulk_enqueue``) on a freshly installed schema, lists built outside the
clock likewise.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks import ours
from benchmarks.context import Context
from benchmarks.peers import pgqueuer_peer as peer
from benchmarks.report import PEER, Result, print_results
from benchmarks.scratch_databases import execute, settle, state_counts, warm
from benchmarks.stats import median
from pgq_sa import JobSpec

SCHEMA = "bench_bulk"


def measure_ours(context: Context, jobs: int, repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` ``enqueue_many`` calls of ``jobs`` jobs."""
    timings: list[float] = []
    with context.queue_schema(SCHEMA):
        queue = ours.noop_queue(SCHEMA, "threads")
        for number in range(1, repeat + 1):
            with context.progress.step(f"bulk pgq_sa enqueue_many of {jobs:,} ({number}/{repeat})"):
                execute(context.engine, f"TRUNCATE {SCHEMA}.jobs")
                specs = [JobSpec(ours.NOOP) for _ in range(jobs)]
                settle(context.engine)
                warm(context.engine, 1)
                started = time.perf_counter()
                ids = queue.enqueue_many(context.engine, specs)
                timings.append(time.perf_counter() - started)
                if len(ids) != jobs or state_counts(context.engine, SCHEMA) != {"queued": jobs}:
                    raise RuntimeError(f"enqueue_many did not store {jobs:,} queued jobs")
            context.progress.line(f"    {jobs / timings[-1]:,.0f} jobs/s ({timings[-1]:.3f} s)")
    return timings


def measure_peer(context: Context, jobs: int, repeat: int) -> list[float]:
    timings: list[float] = []
    try:
        for number in range(1, repeat + 1):
            with context.progress.step(
                f"bulk {PEER} Queries.enqueue of {jobs:,} ({number}/{repeat})"
            ):
                asyncio.run(peer.pgqueuer_install(context.dsn, context.durability))
                settle(context.engine)
                timings.append(asyncio.run(peer.pgqueuer_bulk_enqueue(context.dsn, jobs)))
            context.progress.line(f"    {jobs / timings[-1]:,.0f} jobs/s ({timings[-1]:.3f} s)")
    finally:
        asyncio.run(peer.pgqueuer_uninstall(context.dsn))
    return timings


def run(
    context: Context, *, jobs: int, repeat: int, peer_name: str | None, show: bool = True
) -> list[Result]:
    mine = [jobs / seconds for seconds in measure_ours(context, jobs, repeat)]
    theirs = (
        [jobs / seconds for seconds in measure_peer(context, jobs, repeat)]
        if peer_name == "pgqueuer"
        else None
    )
    results = [
        Result(
            benchmark=f"bulk enqueue {jobs:,}",
            case=f"enqueue_many on an Engine, median of {repeat}",
            metric="jobs/s",
            value=median(mine),
            value_range=(min(mine), max(mine)) if repeat > 1 else None,
            reference=median(theirs) if theirs else None,
            reference_range=(min(theirs), max(theirs)) if theirs and repeat > 1 else None,
            reference_label=f"{PEER} Queries.enqueue (asyncpg)" if theirs else "",
        )
    ]
    if show:
        print_results(f"bulk: one enqueue_many of {jobs:,} jobs, median of {repeat}", results)
    return results
