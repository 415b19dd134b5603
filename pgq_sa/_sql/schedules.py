"""Periodic schedules: their rows, and turning one fire time into exactly one job."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    SmallInteger,
    Text,
    bindparam,
    column,
    func,
    select,
    text,
    update,
)
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables
from pgq_sa._sql.shared import JsonColumn, json_rows

_SCHEDULE_COLUMNS = (
    column("name", Text),
    column("enabled", Boolean),
    column("last_fire_at", DateTime(timezone=True)),
    column("updated_at", DateTime(timezone=True)),
)


SCHEDULE_INPUT: tuple[JsonColumn, ...] = (
    ("names", "name", "text"),
    ("expressions", "expression", "text"),
    ("timezones", "timezone", "text"),
    ("missed", "missed", "text"),
    ("next_fire_at", "next_fire_at", "text"),
)


def upsert_schedules(tables: QueueTables) -> Executable:
    """Record the schedules a worker's code declares; a changed definition restarts its baseline.
    ``enabled`` (the operator's switch) and the last fire time are kept."""
    s = tables.schema
    return (
        text(
            f"""
INSERT INTO "{s}".schedules AS c (name, task, expression, timezone, missed, next_fire_at)
SELECT t.name, t.name, t.expression, t.timezone, t.missed, t.next_fire_at::timestamptz
  FROM {json_rows(SCHEDULE_INPUT)}
ON CONFLICT (name) DO UPDATE
   SET seen_at = now(),
       next_fire_at = CASE WHEN c.enabled THEN excluded.next_fire_at END,
       updated_at = CASE WHEN (c.expression, c.timezone, c.missed)
                              IS DISTINCT FROM (excluded.expression, excluded.timezone,
                                                excluded.missed)
                         THEN now() ELSE c.updated_at END,
       expression = excluded.expression, timezone = excluded.timezone, missed = excluded.missed
RETURNING c.name, c.enabled, c.last_fire_at, c.updated_at
"""
        )
        .bindparams(*(bindparam(parameter, type_=Text) for parameter, _, _ in SCHEDULE_INPUT))
        .columns(*_SCHEDULE_COLUMNS)
    )


def touch_schedules(tables: QueueTables) -> Executable:
    """A worker still declares these schedules; read back their switch and last fire time."""
    schedules = tables.schedules
    return (
        update(schedules)
        .where(schedules.c.name == func.any(bindparam("names", type_=ARRAY(Text))))
        .values(seen_at=func.now())
        .returning(
            schedules.c.name, schedules.c.enabled, schedules.c.last_fire_at, schedules.c.updated_at
        )
    )


def fire_schedule(tables: QueueTables) -> Executable:
    """Enqueue the job of one fire time, exactly once however many workers try.

    The schedule row's ``last_fire_at`` only moves forward, under its row lock, so a second
    worker waiting on the lock finds the fire time taken and inserts nothing; the unique index
    on (schedule, scheduled_at) backs that up.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH fired AS (
    UPDATE "{s}".schedules
       SET last_fire_at = :fire_at, next_fire_at = :next_fire_at
     WHERE name = :name AND enabled AND (last_fire_at IS NULL OR last_fire_at < :fire_at)
    RETURNING name
)
INSERT INTO "{s}".jobs (task, queue, priority, max_attempts, run_at, schedule, scheduled_at)
SELECT :name, :queue, :priority, :max_attempts, :fire_at, :name, :fire_at FROM fired
ON CONFLICT (schedule, scheduled_at) WHERE schedule IS NOT NULL DO NOTHING
RETURNING id
"""
        )
        .bindparams(
            bindparam("name", type_=Text),
            bindparam("queue", type_=Text),
            bindparam("priority", type_=SmallInteger),
            bindparam("max_attempts", type_=Integer),
            bindparam("fire_at", type_=DateTime(timezone=True)),
            bindparam("next_fire_at", type_=DateTime(timezone=True)),
        )
        .columns(column("id", BigInteger))
    )


def list_schedules(tables: QueueTables) -> Executable:
    schedules = tables.schedules
    return select(
        schedules.c.name,
        schedules.c.expression,
        schedules.c.timezone,
        schedules.c.enabled,
        schedules.c.missed,
        schedules.c.last_fire_at,
        schedules.c.next_fire_at,
        schedules.c.seen_at,
    ).order_by(schedules.c.name)


def set_schedule_enabled(tables: QueueTables) -> Executable:
    schedules = tables.schedules
    return (
        update(schedules)
        .where(schedules.c.name == bindparam("schedule", type_=Text))
        .values(enabled=bindparam("switch", type_=Boolean), updated_at=func.now())
        .returning(schedules.c.name)
    )


# --- monitoring (read-only; status, jobs list, workers, dashboard, metrics) ---------------------
#
# Each reads only what an index bounds: live jobs through the partial indexes on queued/running
# rows, recent finishes through the finished-at index (a range, never the whole history), failed
# and cancelled jobs through their own partial index. None of them scans the succeeded history.
