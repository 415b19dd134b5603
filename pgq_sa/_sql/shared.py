"""Pieces every statement module shares: the column lists of a claimed and an inserted job, state
predicates written as literals (for generic plans), wake-up and finished-job NOTIFY payloads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    Interval,
    Text,
    column,
    func,
    literal_column,
    or_,
)
from sqlalchemy.sql.expression import ColumnClause, ColumnElement

from pgq_sa._schema import JobStatus, QueueTables, notify_channel

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


class ClaimedRow(NamedTuple):
    """What every claim statement returns for a leased job, in this order: the plain claim, the
    limited claim and ``finish_and_claim`` (which puts its ``claimed`` flag first). Rows from the
    drivers are unpacked into this shape once (asyncpg records have no attribute access)."""

    id: int
    task: str
    payload: Any
    attempt: int
    max_attempts: int
    priority: int
    queue: str
    created_at: datetime
    timeout: float | None
    scheduled_at: datetime | None
    cancel_requested: bool
    run_at: datetime
    started_at: datetime
    meta: Any
    workflow_id: int | None  # a step's upstream and dependents: see ``step_context``


CLAIMED_COLUMNS: tuple[str, ...] = ClaimedRow._fields


class FinishSummaryRow(NamedTuple):
    """The last row of ``finish_and_claim`` (its ``claimed`` flag false): what was written."""

    written_ids: list[int] | None
    written_states: list[str] | None
    next_run_at: datetime | None
    notices: int
    alive: bool  # the claimer's row is alive (else it claimed nothing: it must register again)


class FinishedRow(NamedTuple):
    """One row of ``finish``: an outcome written under its lease."""

    id: int
    state: str
    run_at: datetime
    notices: int


# One column of a "rows from JSON arrays" input: (bind parameter, column name, kind), where kind
# "text" yields each element as text (cast it in the SELECT) and "jsonb" as a jsonb value.
JsonColumn = tuple[str, str, Literal["text", "jsonb"]]


def json_rows(columns: Sequence[JsonColumn], alias: str = "t", *, ordinality: bool = False) -> str:
    """A ``ROWS FROM`` over one JSON array parameter per column, zipped by position, as the FROM
    item ``alias``: how every bulk input (enqueue, outcomes, limits, schedules) reaches SQL.

    JSON text is the cheapest way to ship 100,000 values through any driver (their array
    encoders are slower), and payloads arrive already serialised. An array shorter than the
    others (``[]`` for a column that is NULL everywhere) is padded with NULLs. ``ordinality``
    adds the 1-based position as column ``ord``.
    """
    functions = ",\n".join(
        f"         json_array_elements_text(CAST(:{parameter} AS json))"
        if kind == "text"
        else f"         jsonb_array_elements(CAST(:{parameter} AS jsonb))"
        for parameter, _, kind in columns
    )
    names = [name for _, name, _ in columns] + (["ord"] if ordinality else [])
    return (
        f"ROWS FROM (\n{functions}\n       ){' WITH ORDINALITY' if ordinality else ''}"
        f" AS {alias}({', '.join(names)})"
    )


# The bulk enqueue's input columns, one JSON array each (payloads and meta already serialised).
ENQUEUE_COLUMNS = (
    "task",
    "queue",
    "payload",
    "priority",
    "max_attempts",
    "run_at",
    "delay",
    "dedupe_key",
    "meta",
)
_NEW_JOBS_SOURCE = """
SELECT nextval('"{schema}".jobs_id_seq') AS id, t.ord, t.task, t.queue,
       nullif(t.payload, 'null'::jsonb) AS payload,
       t.priority::smallint AS priority, t.max_attempts::integer AS max_attempts,
       coalesce(t.run_at::timestamptz,
                now() + t.delay::double precision * interval '1 second') AS run_at,
       t.dedupe_key, nullif(t.meta, 'null'::jsonb) AS meta{extra}
  FROM {rows}
"""


def json_input(columns: Sequence[str]) -> tuple[JsonColumn, ...]:
    """The JSON-array inputs of ``columns`` (payload and meta as jsonb, the rest as text)."""
    return tuple(
        (name, name, "jsonb" if name in ("payload", "meta") else "text") for name in columns
    )


def new_jobs_source(schema: str, inputs: tuple[JsonColumn, ...]) -> str:
    """The SELECT turning the JSON arrays ``inputs`` (:data:`ENQUEUE_COLUMNS`, then any extra
    text columns, passed through) into new job rows: an id drawn per row in input order, its
    position (``ord``), the columns typed, ``run_at`` from ``run_at`` or ``delay``."""
    extra = "".join(f", t.{name}" for _, name, _ in inputs[len(ENQUEUE_COLUMNS) :])
    return _NEW_JOBS_SOURCE.format(
        schema=schema, rows=json_rows(inputs, ordinality=True), extra=extra
    )


ENQUEUE_INPUT = json_input(ENQUEUE_COLUMNS)


def claimed_sql(alias: str) -> str:
    """``CLAIMED_COLUMNS`` of the jobs row ``alias``, for a RETURNING list in SQL text."""
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
