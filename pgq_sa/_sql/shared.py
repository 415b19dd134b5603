"""Pieces every statement module shares: the column lists of a claimed and an inserted job, state
predicates written as literals (for generic plans), wake-up and finished-job NOTIFY payloads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Interval,
    Text,
    case,
    column,
    func,
    literal_column,
    or_,
)
from sqlalchemy.schema import Table
from sqlalchemy.sql.expression import ColumnClause, ColumnElement

from pgq_sa._schema import JobStatus, QueueTables, finished_channel, notify_channel

LIVE_PREDICATE = "dedupe_key IS NOT NULL AND state IN ('queued', 'running')"

# The bulk enqueue input: one JSON array per column, zipped by ordinality. JSON text is the
# cheapest way to ship 100,000 values through either driver (their array encoders are slower),
# and payloads arrive already serialised, so they are joined into the array without re-encoding.
# A column that is NULL for every job is sent as an empty array: ROWS FROM pads it with NULLs.
# The columns a job row gets from the enqueue statement (the rest take their defaults).
INSERTED_COLUMNS = (
    "id",
    "task",
    "queue",
    "payload",
    "priority",
    "max_attempts",
    "run_at",
    "dedupe_key",
    "meta",
)

# What every claim statement returns for a leased job, in this order (the workers unpack rows
# by position on the hot path): the Core claim, the limited claim and finish_and_claim.
CLAIMED_COLUMNS = (
    "id",
    "task",
    "payload",
    "attempt",
    "max_attempts",
    "priority",
    "queue",
    "created_at",
    "timeout",
    "scheduled_at",
    "cancel_requested",
    "run_at",
    "started_at",
    "meta",
)


def claimed_sql(alias: str) -> str:
    """``CLAIMED_COLUMNS`` of the table ``alias``, for a RETURNING list in SQL text."""
    return ", ".join(f"{alias}.{name}" for name in CLAIMED_COLUMNS)


def claimed_types(tables: QueueTables) -> list[ColumnClause[Any]]:
    """``CLAIMED_COLUMNS`` typed as the jobs table types them, for ``TextClause.columns``."""
    return [column(name, tables.jobs.c[name].type) for name in CLAIMED_COLUMNS]


def one_second() -> ColumnElement[timedelta]:
    return literal_column("interval '1 second'", type_=Interval())


def in_states(state: ColumnElement[object], *states: str) -> ColumnElement[bool]:
    """``state = 'x'`` / ``state IN ('x', 'y')`` with the states as SQL literals, never bind
    parameters: a prepared statement's generic plan can then still use the partial indexes."""
    literals = [literal_column(f"'{JobStatus(value).value}'", type_=state.type) for value in states]
    return state == literals[0] if len(literals) == 1 else state.in_(literals)


def live_states(state: ColumnElement[object]) -> ColumnElement[bool]:
    """``state = 'queued' OR state = 'running'``: unlike ``IN``, PostgreSQL can answer the OR with
    the two partial indexes (a BitmapOr) instead of reading the whole finished history."""
    return or_(in_states(state, "queued"), in_states(state, "running"))


def wake_message(reason: str, tasks: ColumnElement[object] | None = None) -> ColumnElement[str]:
    """A ``pg_notify`` payload (JSON text) telling workers that jobs became claimable."""
    return func.json_build_object(
        "reason", reason, "tasks", tasks if tasks is not None else None
    ).cast(Text)


def notify(tables: QueueTables, message: ColumnElement[str]) -> ColumnElement[object]:
    return func.pg_notify(notify_channel(tables.schema), message)


def announce_finished(tables: QueueTables, jobs: Table) -> ColumnElement[object]:
    """A NOTIFY of one finished job's id on the finished channel, if someone waits for it."""
    message = func.json_build_object("ids", func.json_build_array(jobs.c.id)).cast(Text)
    return case(
        (jobs.c.awaited, func.pg_notify(finished_channel(tables.schema), message)),
        else_=None,
    )


def announce_finished_sql(channel: str, rows: str) -> str:
    """SQL selecting one NOTIFY on ``channel`` of the ids in ``rows`` (a CTE returning ``id``,
    ``state`` and ``awaited``) that ended and are awaited; none when there are none. A message over
    PostgreSQL's 8000-byte limit becomes ``{"ids": null}`` (waiters then re-read their job)."""
    return f"""
    SELECT pg_notify('{channel}',
                     CASE WHEN octet_length(m.message) <= 7900 THEN m.message
                          ELSE '{{"ids": null}}' END)
      FROM (SELECT json_build_object('ids', json_agg(id))::text AS message
              FROM {rows} WHERE state <> 'queued' AND awaited HAVING count(*) > 0) AS m"""
