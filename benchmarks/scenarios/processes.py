"""``processes``: one queue drained by 1, 2 and 4 worker processes at once.

``jobs`` no-ops are enqueued and ANALYZEd; then ``n`` processes, each one pgq_sa worker of the
same kind and budget as in ``drain``, are started, connected and warmed up, and released
together; each runs ``run(until_empty=True)``. Wall: from the release until the last process
exits (process exit included). Span: ``max(finished_at) - min(started_at)``. The ratio is set
against the single process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks import children, machine, ours
from benchmarks.context import Context
from benchmarks.report import Result, print_results
from benchmarks.scenarios.drain import _span_seconds
from benchmarks.scenarios.fleet import fleet
from benchmarks.scratch_databases import (
    analyze,
    expect_succeeded,
    settle,
    state_counts,
)


def measure(context: Context, kind: str, batch_size: int, jobs: int, count: int) -> float:
    """One drain of ``jobs`` by ``count`` processes; returns jobs/s over the span."""
    schema = f"bench_processes_{kind}_{count}"
    label = f"processes: {count} x {ours.describe(kind, batch_size)}, {jobs:,} jobs"
    with context.progress.step(label), context.queue_schema(schema):
        url = context.url.render_as_string(hide_password=False)
        queue = ours.noop_queue(schema, kind)
        ours.enqueue_noops(queue, context.engine, jobs)
        analyze(context.engine, f"{schema}.jobs")
        settle(context.engine)
        workers = [(children.work, (kind, url, schema, batch_size, True)) for _ in range(count)]
        with fleet(workers) as running:
            cpu_before = machine.cpu_sample()
            started = time.perf_counter()
            running.start()

            def done() -> int:
                return state_counts(context.engine, schema).get("succeeded", 0)

            with context.progress.counting(f"{count} x {kind}", jobs, done):
                for process in running.processes:
                    process.join(ours.deadline_for(jobs))
            elapsed = time.perf_counter() - started
            failed = [p.exitcode for p in running.processes if p.exitcode != 0]
            if failed:
                raise RuntimeError(f"worker processes exited with {failed}")
        steal = machine.steal_since(cpu_before)
        expect_succeeded(context.engine, schema, jobs)
        span = _span_seconds(context, schema)
    context.progress.line(
        f"    {jobs / elapsed:,.0f} jobs/s wall ({elapsed:.2f} s), {jobs / span:,.0f} jobs/s "
        f"span ({span:.2f} s); {steal}; all {jobs:,} succeeded"
    )
    return jobs / span


def run(
    context: Context,
    *,
    kinds: Sequence[str],
    batch_size: int = 10,
    jobs: int = 30_000,
    counts: Sequence[int] = (1, 2, 4),
    show: bool = True,
) -> list[Result]:
    results = []
    for kind in kinds:
        rates = {count: measure(context, kind, batch_size, jobs, count) for count in counts}
        single = rates[counts[0]]
        for count in counts:
            results.append(
                Result(
                    benchmark=f"processes, drain {jobs:,} (span)",
                    case=f"{count} x {ours.describe(kind, batch_size)}",
                    metric="jobs/s",
                    value=rates[count],
                    reference=single if count != counts[0] else None,
                    reference_label=f"{counts[0]} process" if count != counts[0] else "",
                )
            )
    if show:
        print_results("processes: one queue, several worker processes", results)
    return results
