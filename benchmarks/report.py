"""Results and how they are printed: an aligned text table per scenario, one markdown summary.

Every :class:`Result` is one figure of pgq_sa and, when there is one, the figure it is compared
with (PgQueuer's, or pgq_sa's own at a smaller table size) and their ratio ``pgq_sa / reference``.
A figure measured several times is the median, shown with the range of the runs in brackets.
Whether a ratio above 1 is good depends on the metric, so each row also says it in words.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

PEER = "PgQueuer 1.6.0"


@dataclass(frozen=True)
class Result:
    """One measured figure, optionally set against a reference figure."""

    benchmark: str
    case: str
    metric: str  # "jobs/s", "ms" or "MB"
    value: float
    reference: float | None = None
    reference_label: str = ""
    note: str = ""
    value_range: tuple[float, float] | None = None
    reference_range: tuple[float, float] | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "jobs/s"

    @property
    def ratio(self) -> float | None:
        """``value / reference``, when there is a reference."""
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    def verdict(self) -> str:
        """The ratio in words: ``1.32x faster``, ``2.10x slower`` (lower ms is faster)."""
        ratio = self.ratio
        if ratio is None or ratio <= 0:
            return ""
        if self.metric == "MB":
            return f"{(ratio - 1) * 100:+.1f}%"
        speed = ratio if self.higher_is_better else 1 / ratio
        if abs(speed - 1) < 0.005:
            return "same"
        return f"{speed:.2f}x faster" if speed > 1 else f"{1 / speed:.2f}x slower"


def _number(value: float, metric: str) -> str:
    if metric == "MB":
        return f"{value:.1f}"
    if metric == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def format_value(
    value: float | None, metric: str, spread: tuple[float, float] | None = None
) -> str:
    """``2,817 jobs/s`` or, with the range of several runs, ``2,817 jobs/s [1,772-3,010]``."""
    if value is None:
        return "-"
    text = f"{_number(value, metric)} {metric}"
    if spread is not None:
        text += f" [{_number(spread[0], metric)}-{_number(spread[1], metric)}]"
    return text


def format_ratio(result: Result) -> str:
    ratio = result.ratio
    return "-" if ratio is None else f"{ratio:.2f}"


HEADERS = ("Benchmark", "Case", "pgq_sa", "Reference", "Ref. value", "pgq_sa/ref", "Verdict")


def _cells(result: Result) -> tuple[str, ...]:
    verdict = result.verdict()
    if result.note:
        verdict = f"{verdict}; {result.note}" if verdict else result.note
    return (
        result.benchmark,
        result.case,
        format_value(result.value, result.metric, result.value_range),
        result.reference_label or "-",
        format_value(result.reference, result.metric, result.reference_range),
        format_ratio(result),
        verdict,
    )


def render_text(results: Sequence[Result]) -> str:
    """An aligned plain-text table."""
    rows = [HEADERS, *(_cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(results: Sequence[Result]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    align = ("---", "---", "---:", "---", "---:", "---:", "---")
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join(align) + " |",
    ]
    for result in results:
        cells = (cell.replace("|", "\\|") for cell in _cells(result))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_results(title: str, results: Sequence[Result], stream: TextIO | None = None) -> None:
    """Print a scenario's results under ``title`` on stdout."""
    out = stream if stream is not None else sys.stdout
    out.write(f"\n{title}\n{'=' * len(title)}\n{render_text(results)}\n")
    out.flush()
