"""The frozen DDL of every schema revision, in order: one module per step.

Each step is plain SQL for one queue schema, written once and never edited after release: a later
change to the tables is a new step, and no step imports live code (``tests/test_migrations.py``
holds a digest of every released step's DDL). Every migration door (``pgq-sa db``, the user's
Alembic branch, ``pgq_sa.migrations.upgrade(op)``) applies these same steps;
:mod:`pgq_sa.migrations` decides which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from pgq_sa._steps import (
    s0001_initial,
    s0002_unsuccessful_index,
    s0003_awaited,
    s0004_workflows,
    s0005_held_keys,
    s0006_row_rules,
)


@dataclass(frozen=True)
class Step:
    """One revision: its id and the SQL statements that apply and revert it."""

    revision: str
    description: str
    up: Callable[[str], list[str]]
    down: Callable[[str], list[str]]

    @classmethod
    def of(cls, module: ModuleType) -> Step:
        return cls(module.REVISION, module.DESCRIPTION, module.up, module.down)


STEPS: tuple[Step, ...] = tuple(
    Step.of(module)
    for module in (
        s0001_initial,
        s0002_unsuccessful_index,
        s0003_awaited,
        s0004_workflows,
        s0005_held_keys,
        s0006_row_rules,
    )
)
