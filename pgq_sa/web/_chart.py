"""The overview's chart: jobs finished per minute over the last hour as stacked SVG bars
(succeeded, failed on top in red, cancelled), computed here and drawn by a template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgq_sa._dashboard import Minute

WIDTH = 1200
HEIGHT = 200
LEFT = 44  # room for the axis labels
BOTTOM = 20
TOP = 8


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    y: float
    height: float
    kind: str  # succeeded | failed | cancelled
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    bottom: float
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[tuple[float, str]]  # time labels along the x axis
    peak: int
    total: int
    failed: int


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def chart(minutes: Sequence[Minute]) -> Chart:
    peak = max((m.total for m in minutes), default=0)
    top = _nice_ceiling(max(peak, 1))
    plot_height = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(len(minutes), 1)
    bars: list[Bar] = []
    for index, minute in enumerate(minutes):
        x = LEFT + index * slot + 1
        base = float(HEIGHT - BOTTOM)
        when = minute.start.strftime("%H:%M")
        for kind, count in (
            ("succeeded", minute.succeeded),
            ("cancelled", minute.cancelled),
            ("failed", minute.failed),
        ):
            if not count:
                continue
            height = count / top * plot_height
            base -= height
            bars.append(Bar(x, max(slot - 2, 1), base, height, kind, f"{when} UTC: {count} {kind}"))
    ticks = [Tick(HEIGHT - BOTTOM - plot_height * f, f"{int(top * f):,}") for f in (0, 0.5, 1)]
    labels = [
        (LEFT + index * slot, minute.start.strftime("%H:%M"))
        for index, minute in enumerate(minutes)
        if index % 10 == 0
    ]
    return Chart(
        WIDTH,
        HEIGHT,
        LEFT,
        HEIGHT - BOTTOM,
        bars,
        ticks,
        labels,
        peak,
        sum(m.total for m in minutes),
        sum(m.failed for m in minutes),
    )
