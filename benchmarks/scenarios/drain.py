"""``drain``: how fast a worker empties a queue of pre-enqueued no-op jobs.

N no-op jobs are enqueued with ``enqueue_many``, the jobs table is ANALYZEd, and the clock runs
from the worker's ``run(until_empty=True)`` call until it returns. In-flight budget 5 x batch:
``ThreadWorker(threads=min(5B, 200))``, ``AsyncWorker(concurrency=5B)``. Afterwards all N rows
must be ``succeeded``.

With ``--peer pgqueuer`` PgQueuer 1.6.0 drains the same N jobs on the same server (five
QueueManagers x batch B, its own tables in the scratch database, ANALYZEd the same way): asyncpg
is the reference for ``asyncio``, psycopg for ``threads`` and ``trio`` (PgQueuer has no trio).

Two figures per drain:

* **wall**: N / the client-side clock above. For pgq_sa this includes noticing the queue is
  empty (up to one ``poll_interval``, 1 s by default) and shutting down; the PgQueuer peer
  stops its managers from the handler as soon as the N-th job has run, so it pays neither.
* **span**: N / (last completion written - first claim), read from the database afterwards
  (pgq_sa: ``max(finished_at) - min(started_at)``; PgQueuer: its log, last ``successful`` -
  first ``picked``). Same definition for both, free of start-up and shut-down costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text

from benchmarks import machine, ours
from benchmarks.context import Context
from benchmarks.peers import pgqueuer_peer as peer
from benchmarks.report import PEER, Result, print_results
from benchmarks.scratch_databases import analyze, expect_succeeded, settle
from benchmarks.stats import summarize

ANALYZE_NOTE = "jobs table ANALYZEd after the enqueue (PgQueuer's too)"


@dataclass(frozen=True)
class Drained:
    """One drain: jobs per second by the wall clock and over the server-side span."""

    wall: float
    span: float


def peer_driver(kind: str) -> str:
    """PgQueuer's driver to compare a pgq_sa worker kind with."""
    return "asyncpg" if kind == "asyncio" else "psycopg"


def _span_seconds(context: Context, schema: str) -> float:
    with context.engine.connect() as connection:
        seconds = connection.execute(
            text(
                f"SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM {schema}.jobs"
            )
        ).scalar()
    return float(seconds)


def measure_ours(context: Context, kind: str, jobs: int, batch_size: int) -> Drained:
    """One pgq_sa drain of ``jobs`` no-ops."""
    label = f"drain pgq_sa {ours.describe(kind, batch_size)}, {jobs:,} jobs"
    with context.progress.step(label):
        schema = f"bench_drain_{kind}_{batch_size}"
        with context.queue_schema(schema):
            queue = ours.noop_queue(schema, kind)
            ours.enqueue_noops(queue, context.engine, jobs)
            analyze(context.engine, f"{schema}.jobs")
            settle(context.engine)
            watched = ours.Watched()
            cpu_before = machine.cpu_sample()
            use_before = machine.CpuUse.now()
            with context.progress.counting(kind, jobs, watched.count):
                elapsed = ours.drain(
                    kind,
                    queue,
                    context.url,
                    context.engine,
                    batch_size,
                    watched,
                    ours.deadline_for(jobs),
                )
            steal = machine.steal_since(cpu_before)
            use = machine.cpu_per_job(use_before, jobs)
            expect_succeeded(context.engine, schema, jobs)
            span = _span_seconds(context, schema)
    result = Drained(jobs / elapsed, jobs / span)
    context.progress.line(
        f"    {result.wall:,.0f} jobs/s wall ({elapsed:.2f} s), {result.span:,.0f} jobs/s span "
        f"({span:.2f} s); {steal}; all {jobs:,} succeeded; {use}"
    )
    return result


def measure_peer(context: Context, driver: str, jobs: int, batch_size: int) -> Drained:
    """One PgQueuer drain (five QueueManagers x ``batch_size``)."""
    label = f"drain {PEER} {driver}, 5 QueueManagers x batch {batch_size}, {jobs:,} jobs"
    with context.progress.step(label):
        asyncio.run(peer.pgqueuer_install(context.dsn, context.durability))
        try:
            settle(context.engine)
            counter = [0]
            cpu_before = machine.cpu_sample()
            use_before = machine.CpuUse.now()
            with context.progress.counting(f"pgqueuer {driver}", jobs, lambda: counter[0]):
                elapsed = asyncio.run(
                    peer.pgqueuer_drain(
                        context.dsn,
                        jobs,
                        batch_size,
                        consumers=5,
                        driver=driver,
                        analyze=True,
                        progress=counter,
                        timeout=ours.deadline_for(jobs),
                    )
                )
            steal = machine.steal_since(cpu_before)
            use = machine.cpu_per_job(use_before, jobs)
            span = asyncio.run(peer.pgqueuer_span(context.dsn))
        finally:
            asyncio.run(peer.pgqueuer_uninstall(context.dsn))
    result = Drained(jobs / elapsed, jobs / span)
    context.progress.line(
        f"    {result.wall:,.0f} jobs/s wall ({elapsed:.2f} s), {result.span:,.0f} jobs/s span "
        f"({span:.2f} s); {steal}; {jobs:,} logged successful; {use}"
    )
    return result


def _spread(values: Sequence[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if len(values) > 1 else None


def run(
    context: Context,
    *,
    jobs: int,
    batch_sizes: Sequence[int],
    kinds: Sequence[str],
    peer_name: str | None,
    repeat: int = 1,
    statistic: str = "median",
    show: bool = True,
) -> list[Result]:
    """Drain ``jobs`` for every batch size and kind (and the peer's matching drivers).

    With ``repeat`` > 1 every measurement is taken that many times, interleaved (all kinds and
    drivers once, then again), and the ``statistic`` of the runs (median or best) is reported
    with their range.
    """
    runs = f", {statistic} of {repeat}" if repeat > 1 else ""
    results: list[Result] = []
    drivers = sorted({peer_driver(kind) for kind in kinds}) if peer_name == "pgqueuer" else []
    for batch_size in batch_sizes:
        mine: dict[str, list[Drained]] = {kind: [] for kind in kinds}
        theirs: dict[str, list[Drained]] = {driver: [] for driver in drivers}
        for _ in range(repeat):
            for kind in kinds:
                mine[kind].append(measure_ours(context, kind, jobs, batch_size))
            for driver in drivers:
                theirs[driver].append(measure_peer(context, driver, jobs, batch_size))
        for figure in ("wall", "span"):
            for kind in kinds:
                driver = peer_driver(kind)
                values = [getattr(d, figure) for d in mine[kind]]
                reference = [getattr(d, figure) for d in theirs.get(driver, [])]
                results.append(
                    Result(
                        benchmark=f"drain {jobs:,} ({figure}){runs}",
                        case=ours.describe(kind, batch_size),
                        metric="jobs/s",
                        value=summarize(values, statistic),
                        value_range=_spread(values),
                        reference=summarize(reference, statistic) if reference else None,
                        reference_range=_spread(reference) if reference else None,
                        reference_label=(
                            f"{PEER} {driver}, 5 QMs x batch {batch_size}" if reference else ""
                        ),
                        note="PgQueuer has no trio; psycopg is the nearest"
                        if kind == "trio" and reference
                        else "",
                    )
                )
    if show:
        title = f"drain: {jobs:,} no-op jobs{runs} [range]; {ANALYZE_NOTE}"
        print_results(title, results)
    return results
