"""Small statistics helpers: median and linearly interpolated percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, interpolating between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(position), math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


STATISTICS = ("median", "best")


def summarize(rates: Sequence[float], statistic: str) -> float:
    """One figure for several throughput runs: their ``median``, or the ``best`` (highest).

    On a machine whose hypervisor steals CPU in bursts, the slow runs measure the neighbours;
    the best run is the closest to what the code can do, and is what ``timeit`` would report.
    """
    if statistic == "best":
        return max(rates)
    if statistic == "median":
        return median(rates)
    raise ValueError(f"unknown statistic {statistic!r}; expected one of {STATISTICS}")
