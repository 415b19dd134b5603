"""``growth``: does a bigger table slow pgq_sa down?

1. Claim time with few vs many queued jobs. Two tables get ``small`` and ``large`` queued rows
   with one ``INSERT ... SELECT generate_series`` each and are ANALYZEd; then ``claims``
   rounds, alternating between the tables: one timed ``protocol.claim`` of ``batch`` jobs on a
   claim lane (``SyncDatabase(engine).lane(CLAIM_SESSION)``, as the workers use), one timed
   ``protocol.finish`` of them as ``succeeded`` on a second lane, and an untimed insert of
   ``batch`` fresh rows so every claim sees the same depth.
2. Drain rate with many finished jobs retained vs none. ``retained`` succeeded rows are inserted
   (``finished_at`` now, well inside the workers' retention, so nothing is pruned) and the table
   is VACUUM ANALYZEd (as autovacuum would have left it); then ``jobs`` no-ops are enqueued,
   ANALYZEd and drained as in the ``drain`` scenario, ``repeat`` times each way, alternating;
   each drain is followed by an untimed, reported VACUUM of its table.

Ratios are large / small: near 1.00 means the table's size does not matter.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text

from benchmarks import machine, ours
from benchmarks.context import Context
from benchmarks.report import Result, print_results
from benchmarks.scratch_databases import (
    analyze,
    execute,
    expect_succeeded,
    settle,
    state_counts,
)
from benchmarks.stats import median, percentile, summarize
from pgq_sa import Queue
from pgq_sa._decisions import succeeded
from pgq_sa._ops import worker as protocol
from pgq_sa._sql import Statements
from pgq_sa._worker.lanes import CLAIM_SESSION, SyncDatabase, SyncLane

QUEUED_ROWS = "INSERT INTO {schema}.jobs (task) SELECT :task FROM generate_series(1, :n)"
FINISHED_ROWS = (
    "INSERT INTO {schema}.jobs (task, state, attempt, started_at, finished_at, worker_id) "
    "SELECT :task, 'succeeded', 1, now(), now(), gen_random_uuid() FROM generate_series(1, :n)"
)


def _insert(context: Context, template: str, schema: str, rows: int) -> None:
    with context.engine.begin() as connection:
        connection.execute(text(template.format(schema=schema)), {"task": ours.NOOP, "n": rows})


@dataclass
class ClaimTable:
    """One queue table under claim: its lanes, its worker identity and its timings."""

    schema: str
    depth: int
    statements: Statements
    database: SyncDatabase
    claim_lane: SyncLane
    finish_lane: SyncLane
    identity: protocol.Identity
    claims: list[float] = field(default_factory=list)
    finishes: list[float] = field(default_factory=list)

    def round(self, context: Context, batch: int, timed: bool) -> None:
        """Claim ``batch`` jobs, finish them as succeeded, put ``batch`` fresh ones back."""
        started = time.perf_counter()
        claimed = self.claim_lane.run(
            protocol.claim(self.statements, self.identity.id, [ours.NOOP], None, batch)
        )
        claimed_at = time.perf_counter()
        if len(claimed) != batch:
            raise RuntimeError(f"claimed {len(claimed)} jobs, expected {batch}")
        outcomes = [succeeded(c.job.id, c.job.attempt, None) for c in claimed]
        finish_started = time.perf_counter()
        finished = self.finish_lane.run(
            protocol.finish(self.statements, self.identity.id, outcomes)
        )
        finished_at = time.perf_counter()
        if len(finished.recorded) != batch:
            raise RuntimeError(f"finished {len(finished.recorded)} of {batch} jobs")
        if timed:
            self.claims.append(claimed_at - started)
            self.finishes.append(finished_at - finish_started)
        _insert(context, QUEUED_ROWS, self.schema, batch)


@contextlib.contextmanager
def _claim_table(context: Context, depth: int, batch: int) -> Iterator[ClaimTable]:
    schema = f"bench_growth_claim_{depth}"
    with context.queue_schema(schema):
        with context.progress.step(f"growth: {schema}: insert {depth:,} queued rows, ANALYZE"):
            _insert(context, QUEUED_ROWS, schema, depth)
            analyze(context.engine, f"{schema}.jobs")
        statements = Queue(schema=schema).statements
        database = SyncDatabase(context.engine)
        identity = protocol.Identity.new("bench")
        database.run(protocol.register(statements, identity, [ours.NOOP], None, batch, 5.0, 30.0))
        table = ClaimTable(
            schema,
            depth,
            statements,
            database,
            database.lane(CLAIM_SESSION),
            database.lane(),
            identity,
        )
        try:
            yield table
        finally:
            table.claim_lane.close()
            table.finish_lane.close()
            database.run(protocol.deregister(statements, identity.id))


def claim_times(
    context: Context, depths: Sequence[int], claims: int, batch: int
) -> list[ClaimTable]:
    """Claim and finish timings with each of ``depths`` jobs queued, the tables alternating.

    All tables exist side by side; every round claims (and finishes, and tops up) once on each
    in turn, so drift on the machine hits every depth alike. The first round is a warm-up.
    """
    with contextlib.ExitStack() as stack:
        tables = [stack.enter_context(_claim_table(context, d, batch)) for d in depths]
        settle(context.engine)
        shape = " vs ".join(f"{d:,}" for d in depths)
        with context.progress.step(f"growth: {claims} claims of {batch}, {shape} queued"):
            for number in range(claims + 1):
                for table in tables:
                    table.round(context, batch, timed=number > 0)
        for table in tables:
            counts = state_counts(context.engine, table.schema)
            expected = {"queued": table.depth, "succeeded": batch * (claims + 1)}
            if counts != expected:
                raise RuntimeError(f"{table.schema} after the claims: {counts}, not {expected}")
            context.progress.line(
                f"    {table.depth:,} queued: claim median {median(table.claims) * 1000:.2f} ms, "
                f"finish median {median(table.finishes) * 1000:.2f} ms"
            )
    return tables


@dataclass
class DrainRuns:
    """Drain rates and the VACUUM after each drain, for one table size."""

    rates: list[float] = field(default_factory=list)
    vacuum_seconds: list[float] = field(default_factory=list)


def _prepare(context: Context, schema: str, retained: int) -> None:
    with context.progress.step(f"growth: {schema}: {retained:,} succeeded rows, VACUUM ANALYZE"):
        if retained:
            _insert(context, FINISHED_ROWS, schema, retained)
        execute(context.engine, f"VACUUM ANALYZE {schema}.jobs")


def _drain_once(
    context: Context,
    schema: str,
    retained: int,
    number: int,
    jobs: int,
    kind: str,
    batch_size: int,
    runs: DrainRuns,
) -> None:
    """One timed drain of ``jobs``, then an untimed (but reported) VACUUM of the table."""
    label = (
        f"growth: drain {jobs:,} ({ours.describe(kind, batch_size)}), "
        f"{retained:,} retained (run {number})"
    )
    with context.progress.step(label):
        if not retained:
            execute(context.engine, f"TRUNCATE {schema}.jobs")
        queue = ours.noop_queue(schema, kind)
        ours.enqueue_noops(queue, context.engine, jobs)
        analyze(context.engine, f"{schema}.jobs")
        settle(context.engine)
        watched = ours.Watched()
        cpu_before = machine.cpu_sample()
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
        kept = retained + (number - 1) * jobs if retained else 0
        expect_succeeded(context.engine, schema, kept + jobs)
        started = time.perf_counter()
        execute(context.engine, f"VACUUM {schema}.jobs")
        runs.vacuum_seconds.append(time.perf_counter() - started)
    runs.rates.append(jobs / elapsed)
    context.progress.line(
        f"    {runs.rates[-1]:,.0f} jobs/s ({elapsed:.2f} s, {steal}); all {jobs:,} succeeded; "
        f"VACUUM afterwards {runs.vacuum_seconds[-1]:.2f} s"
    )


def drain_rates(
    context: Context, retained: int, jobs: int, kind: str, batch_size: int, repeat: int
) -> tuple[DrainRuns, DrainRuns]:
    """``repeat`` drains of ``jobs`` on an empty table and on one keeping ``retained`` rows.

    Both tables exist side by side and the drains alternate (empty, retained, empty, ...) so
    drift on the machine hits both alike. The retained rows are inserted and VACUUM ANALYZEd
    once; the empty table is truncated before each drain. After every drain the table is
    VACUUMed outside the clock (so autovacuum of one table cannot land in the other's drain),
    and that VACUUM's time is reported: keeping finished rows costs there, not in the drain.
    (With rows retained, each drain's own jobs stay too: 2% more rows per repeat.)
    """
    empty, kept = DrainRuns(), DrainRuns()
    empty_schema, kept_schema = "bench_growth_drain_empty", "bench_growth_drain_retained"
    with context.queue_schema(empty_schema), context.queue_schema(kept_schema):
        _prepare(context, empty_schema, 0)
        _prepare(context, kept_schema, retained)
        for number in range(1, repeat + 1):
            _drain_once(context, empty_schema, 0, number, jobs, kind, batch_size, empty)
            _drain_once(context, kept_schema, retained, number, jobs, kind, batch_size, kept)
    return empty, kept


def run(
    context: Context,
    *,
    depths: Sequence[int] = (1_000, 1_000_000),
    claims: int = 200,
    claim_batch: int = 10,
    retained: int = 1_000_000,
    jobs: int = 20_000,
    kind: str = "threads",
    batch_size: int = 10,
    repeat: int = 1,
    statistic: str = "median",
    show: bool = True,
) -> list[Result]:
    small, large = depths
    small_table, large_table = claim_times(context, depths, claims, claim_batch)
    small_claims, small_finishes = small_table.claims, small_table.finishes
    large_claims, large_finishes = large_table.claims, large_table.finishes
    empty, kept = drain_rates(context, retained, jobs, kind, batch_size, repeat)
    empty_rates, retained_rates = empty.rates, kept.rates

    def ms(values: Sequence[float], p: float) -> float:
        return percentile(values, p) * 1000

    reference = f"pgq_sa, {small:,} queued"
    results = [
        Result(
            "growth",
            f"claim of {claim_batch}, {large:,} queued, median",
            "ms",
            ms(large_claims, 50),
            ms(small_claims, 50),
            reference,
        ),
        Result(
            "growth",
            f"claim of {claim_batch}, {large:,} queued, p90",
            "ms",
            ms(large_claims, 90),
            ms(small_claims, 90),
            reference,
        ),
        Result(
            "growth",
            f"finish of {claim_batch}, {large:,} queued, median",
            "ms",
            ms(large_finishes, 50),
            ms(small_finishes, 50),
            reference,
        ),
        Result(
            "growth",
            f"drain {jobs:,}, {ours.describe(kind, batch_size)}, {retained:,} finished retained"
            + (f", {statistic} of {repeat}" if repeat > 1 else ""),
            "jobs/s",
            summarize(retained_rates, statistic),
            summarize(empty_rates, statistic),
            "pgq_sa, empty table",
            value_range=(min(retained_rates), max(retained_rates)) if repeat > 1 else None,
            reference_range=(min(empty_rates), max(empty_rates)) if repeat > 1 else None,
        ),
        Result(
            "growth",
            f"VACUUM after each drain of {jobs:,}, {retained:,} finished retained (untimed above)",
            "ms",
            median(kept.vacuum_seconds) * 1000,
            median(empty.vacuum_seconds) * 1000,
            "pgq_sa, empty table",
        ),
    ]
    if show:
        print_results("growth: large table / small table", results)
    return results
