"""``memory``: a worker's resident memory when idle, and after 10,000 vs 1,000,000 jobs.

One pgq_sa worker runs in a process of its own (as in ``processes``), so its RSS is its own
(``VmRSS`` in ``/proc/PID/status``, Linux). Read (1) once it has been idle for ``idle``
seconds, (2) after draining ``small`` jobs, (3) after draining ``large`` jobs in all (the rest
enqueued in chunks while it works). Targets: idle <= 80 MB; after ``large`` within 10% of
after ``small``. Peak RSS (``VmHWM``) is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text

from benchmarks import children, machine, ours
from benchmarks.context import Context
from benchmarks.report import Result, print_results
from benchmarks.scenarios.fleet import fleet

CHUNK = 50_000


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def _live(context: Context, schema: str) -> int:
    with context.engine.connect() as connection:
        value = connection.execute(
            text(f"SELECT count(*) FROM \"{schema}\".jobs WHERE state IN ('queued', 'running')")
        ).scalar()
    return int(value or 0)


def _wait_drained(context: Context, schema: str, enqueued: int, label: str) -> None:
    """Poll (each second) until no job is queued or running; a bar shows the progress."""
    live = [enqueued]

    with context.progress.counting(label, enqueued, lambda: enqueued - live[0]):
        deadline = time.monotonic() + ours.deadline_for(enqueued)
        while live[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{live[0]:,} jobs still live after the deadline")
            time.sleep(1.0)
            live[0] = _live(context, schema)


def measure(
    context: Context, kind: str, batch_size: int, small: int, large: int, idle: float
) -> dict[str, float]:
    schema = f"bench_memory_{kind}"
    figures: dict[str, float] = {}
    label = f"memory: {ours.describe(kind, batch_size)}, idle, {small:,}, {large:,} jobs"
    with context.progress.step(label), context.queue_schema(schema):
        url = context.url.render_as_string(hide_password=False)
        queue = ours.noop_queue(schema, kind)
        cpu_before = machine.cpu_sample()
        with fleet([(children.work, (kind, url, schema, batch_size, False))]) as running:
            pid = running.processes[0].pid
            assert pid is not None
            running.start()
            time.sleep(idle)
            figures["idle"] = rss_mb(pid)
            ours.enqueue_noops(queue, context.engine, small)
            _wait_drained(context, schema, small, f"{kind} first {small:,}")
            figures["small"] = rss_mb(pid)
            enqueued = small
            while enqueued < large:
                size = min(CHUNK, large - enqueued)
                ours.enqueue_noops(queue, context.engine, size)
                enqueued += size
            _wait_drained(context, schema, large - small, f"{kind} up to {large:,}")
            figures["large"] = rss_mb(pid)
            figures["peak"] = rss_mb(pid, "VmHWM")
    context.progress.line(
        f"    RSS idle {figures['idle']:.1f} MB, after {small:,} {figures['small']:.1f} MB, "
        f"after {large:,} {figures['large']:.1f} MB (peak {figures['peak']:.1f} MB); "
        f"{machine.steal_since(cpu_before)}"
    )
    return figures


def run(
    context: Context,
    *,
    kinds: Sequence[str],
    batch_size: int = 10,
    small: int = 10_000,
    large: int = 1_000_000,
    idle: float = 3.0,
    show: bool = True,
) -> list[Result]:
    results = []
    for kind in kinds:
        figures = measure(context, kind, batch_size, small, large, idle)
        case = ours.describe(kind, batch_size)
        results += [
            Result("memory (RSS MB)", f"{case}, idle", "MB", figures["idle"], note="target <= 80"),
            Result(
                "memory (RSS MB)",
                f"{case}, after {large:,} jobs (peak {figures['peak']:.1f})",
                "MB",
                figures["large"],
                figures["small"],
                f"after {small:,} jobs",
                note="target: within 10%",
            ),
        ]
    if show:
        print_results("memory: resident set of one worker process", results)
    return results
