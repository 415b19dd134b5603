"""``all``: every scenario against PgQueuer, then one markdown summary for BENCHMARKS.md.

drain (batch 10 and 100, every worker kind), bulk, wakeup (every kind) and growth, in that
order; drains are run ``drain_repeat`` / ``growth_repeat`` times (the ``statistic`` of the runs,
best by default, is reported with their range) and wake-ups are sampled in ``wakeup_rounds``.
A section that raises is reported and run once more (the workers may be mid-tuning);
if it fails again the summary says so and the suite moves on.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

from benchmarks import machine, ours
from benchmarks.context import Context
from benchmarks.report import Result, print_results, render_markdown
from benchmarks.scenarios import bulk, drain, growth, wakeup

BATCH_SIZES = (10, 100)


def _section(
    context: Context, name: str, measure: Callable[[], list[Result]], notes: list[str]
) -> list[Result]:
    """Run one section; on an error report it and try once more."""
    for attempt in (1, 2):
        try:
            results = measure()
        except Exception as error:
            context.progress.line(f"!! {name} failed (attempt {attempt}):")
            context.progress.line(traceback.format_exc().rstrip())
            summary = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            if attempt == 2:
                notes.append(f"{name}: failed twice; last error {summary}")
                return []
            notes.append(f"{name}: attempt 1 failed ({summary}); re-run once")
        else:
            return results
    return []  # pragma: no cover


def steps(
    kinds: Sequence[str], drain_repeat: int, repeat: int, growth_repeat: int, wakeup_rounds: int
) -> int:
    """How many progress steps the suite takes."""
    per_batch = len(kinds) + len({drain.peer_driver(k) for k in kinds})
    drain_steps = len(BATCH_SIZES) * per_batch * drain_repeat
    growth_steps = 3 + 2 + 2 * growth_repeat
    wakeup_steps = wakeup_rounds * (len(kinds) + 1)
    return drain_steps + 2 * repeat + wakeup_steps + growth_steps


def run(
    context: Context,
    *,
    jobs: int,
    drain_repeat: int,
    bulk_jobs: int,
    repeat: int,
    samples: int,
    growth_jobs: int,
    growth_repeat: int,
    statistic: str = "best",
    wakeup_rounds: int = 4,
    kinds: Sequence[str] = ours.KINDS,
    command: str = "",
) -> str:
    """Run everything; print and return the markdown summary."""
    context.progress.plan(steps(kinds, drain_repeat, repeat, growth_repeat, wakeup_rounds))
    info = machine.describe(context.engine)
    cpu_at_start = machine.cpu_sample()
    notes: list[str] = []
    results: list[Result] = []
    for batch_size in BATCH_SIZES:
        results += _section(
            context,
            f"drain batch {batch_size}",
            lambda b=batch_size: drain.run(
                context,
                jobs=jobs,
                batch_sizes=[b],
                kinds=kinds,
                peer_name="pgqueuer",
                repeat=drain_repeat,
                statistic=statistic,
            ),
            notes,
        )
    results += _section(
        context,
        "bulk",
        lambda: bulk.run(context, jobs=bulk_jobs, repeat=repeat, peer_name="pgqueuer"),
        notes,
    )
    results += _section(
        context,
        "wakeup",
        lambda: wakeup.run(
            context, samples=samples, kinds=kinds, peer_name="pgqueuer", rounds=wakeup_rounds
        ),
        notes,
    )
    results += _section(
        context,
        "growth",
        lambda: growth.run(context, jobs=growth_jobs, repeat=growth_repeat, statistic=statistic),
        notes,
    )

    print_results("all: summary", results)
    info["load average at end"] = machine.load_average()
    steal = machine.steal_percent(cpu_at_start, machine.cpu_sample())
    info["CPU steal during the run"] = "unknown" if steal is None else f"{steal:.1f}%"
    parts = ["## Results", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += [machine.render_markdown(info), "", render_markdown(results), ""]
    if notes:
        parts += ["Notes from the run:", "", *(f"- {note}" for note in notes), ""]
    markdown = "\n".join(parts)
    print("\n--- markdown summary ---\n")
    print(markdown)
    return markdown
