"""Formatting for people, shared by the terminal views and the web dashboard."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``4.2s``, ``3m05s``, ``2h03m``, ``3d04h``; ``-``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3600:02d}h"
