"""The part of a worker that turns cron schedules into jobs, shared by both workers.

Every worker that has periodic tasks runs a scheduler; there is no leader. Each fire time goes
through the ``fire_schedule`` statement, which enqueues it once however many workers try. This
module holds the decisions (what is due, when to wake); the workers only wait and execute.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pgq_sa._cron import CronSchedule
from pgq_sa._ops.drive import Operation
from pgq_sa._sql import Statements
from pgq_sa._tasks import TaskDefinition

log = logging.getLogger("pgq_sa.scheduler")
UTC = timezone.utc
MAX_SLEEP = 1.0


@dataclass
class _Known:
    enabled: bool
    last_fire: datetime | None
    baseline: datetime


@dataclass
class SchedulerState:
    """What one worker knows of its schedules: each one's switch and last fire time."""

    schedules: dict[str, CronSchedule]
    tasks: dict[str, TaskDefinition]
    known: dict[str, _Known] = field(default_factory=dict)

    def refresh(self, rows: Sequence[Any]) -> None:
        for row in rows:
            self.known[row.name] = _Known(row.enabled, row.last_fire_at, row.updated_at)

    def due(self, now: datetime) -> list[tuple[CronSchedule, datetime]]:
        fires: list[tuple[CronSchedule, datetime]] = []
        for name, schedule in self.schedules.items():
            state = self.known.get(name)
            if state is None or not state.enabled:
                continue
            start = max(state.last_fire or state.baseline, state.baseline)
            fires.extend((schedule, at) for at in schedule.due(start, state.baseline, now))
        return fires

    def fired(self, name: str, at: datetime) -> None:
        state = self.known[name]
        if state.last_fire is None or at > state.last_fire:
            state.last_fire = at

    def next_wake(self, now: datetime) -> float:
        """Seconds until the next fire time (at most ``MAX_SLEEP``, to notice changes)."""
        soonest = now + timedelta(seconds=MAX_SLEEP)
        for name, schedule in self.schedules.items():
            state = self.known.get(name)
            if state is None or not state.enabled:
                continue
            start = max(state.last_fire or state.baseline, state.baseline, now)
            soonest = min(soonest, schedule.next_after(start))
        return max((soonest - now).total_seconds(), 0.0)


def upsert(statements: Statements, state: SchedulerState, now: datetime) -> Operation[bool]:
    schedules = list(state.schedules.values())
    rows = yield (
        statements.upsert_schedules,
        {
            "names": json.dumps([s.name for s in schedules]),
            "expressions": json.dumps([s.expression for s in schedules]),
            "timezones": json.dumps([s.timezone for s in schedules]),
            "missed": json.dumps([s.missed for s in schedules]),
            "next_fire_at": json.dumps([s.next_after(now).isoformat() for s in schedules]),
        },
    )
    state.refresh(rows)
    return True


def touch(statements: Statements, state: SchedulerState) -> Operation[bool]:
    rows = yield statements.touch_schedules, {"names": sorted(state.schedules)}
    state.refresh(rows)
    return True


def fire_due(statements: Statements, state: SchedulerState, now: datetime) -> Operation[int]:
    """Enqueue every fire time due at ``now``; returns how many jobs this worker inserted."""
    inserted = 0
    for schedule, at in state.due(now):
        task = state.tasks[schedule.name]
        rows = yield (
            statements.fire_schedule,
            {
                "name": schedule.name,
                "queue": task.queue,
                "priority": task.priority,
                "max_attempts": task.max_attempts,
                "fire_at": at,
                "next_fire_at": schedule.next_after(at),
            },
        )
        state.fired(schedule.name, at)
        if rows:
            inserted += 1
            log.debug("schedule %s fired for %s (job %s)", schedule.name, at, rows[0].id)
    return inserted


def now_utc() -> datetime:
    return datetime.now(UTC)
