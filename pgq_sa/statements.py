"""Every SQL statement pgq_sa runs, built once per queue schema as SQLAlchemy Core executables.

No I/O here: builders take the tables and return statements whose inputs are all bind parameters,
so SQLAlchemy's compiled cache and the drivers' prepared statements are reused for every call.
Producers, workers, the CLI and the dashboard all execute these same objects; nothing else in the
package writes SQL for the queue's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    DateTime,
    Integer,
    Select,
    SmallInteger,
    Text,
    and_,
    bindparam,
    case,
    column,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by, insert
from sqlalchemy.sql.expression import ColumnElement, Executable

from pgq_sa.schema import QueueTables, notify_channel

LIVE_PREDICATE = "dedupe_key IS NOT NULL AND state IN ('queued', 'running')"

# The bulk enqueue input: one JSON array per column, zipped by ordinality. JSON text is the
# cheapest way to ship 100,000 values through either driver (their array encoders are slower),
# and payloads arrive already serialised, so they are joined into the array without re-encoding.
# A column that is NULL for every job is sent as an empty array: ROWS FROM pads it with NULLs.
ENQUEUE_COLUMNS = (
    "task",
    "queue",
    "payload",
    "priority",
    "max_attempts",
    "run_at",
    "delay",
    "dedupe_key",
)
_ENQUEUE_SOURCE = """
SELECT nextval('"{schema}".jobs_id_seq') AS id, t.ord, t.task, t.queue,
       nullif(t.payload, 'null'::jsonb) AS payload,
       t.priority::smallint AS priority, t.max_attempts::integer AS max_attempts,
       coalesce(t.run_at::timestamptz,
                now() + t.delay::double precision * interval '1 second') AS run_at,
       t.dedupe_key
  FROM ROWS FROM (
         json_array_elements_text(CAST(:task AS json)),
         json_array_elements_text(CAST(:queue AS json)),
         jsonb_array_elements(CAST(:payload AS jsonb)),
         json_array_elements_text(CAST(:priority AS json)),
         json_array_elements_text(CAST(:max_attempts AS json)),
         json_array_elements_text(CAST(:run_at AS json)),
         json_array_elements_text(CAST(:delay AS json)),
         json_array_elements_text(CAST(:dedupe_key AS json))
       ) WITH ORDINALITY AS t(task, queue, payload, priority, max_attempts, run_at, delay,
                              dedupe_key, ord)
"""


def wake_message(reason: str, tasks: ColumnElement[object] | None = None) -> ColumnElement[str]:
    """A ``pg_notify`` payload (JSON text) telling workers that jobs became claimable."""
    return func.json_build_object(
        "reason", reason, "tasks", tasks if tasks is not None else None
    ).cast(Text)


@dataclass(frozen=True)
class Statements:
    """The statements of one queue schema."""

    tables: QueueTables
    enqueue: Executable
    live_ids_by_dedupe_key: Executable
    get_job: Executable
    cancel_queued: Executable
    cancel_running: Executable
    retry_finished: Executable
    set_paused: Executable
    list_queues: Executable

    @classmethod
    def build(cls, tables: QueueTables) -> Statements:
        return cls(
            tables=tables,
            enqueue=_enqueue(tables),
            live_ids_by_dedupe_key=_live_ids_by_dedupe_key(tables),
            get_job=_get_job(tables),
            cancel_queued=_cancel_queued(tables),
            cancel_running=_cancel_running(tables),
            retry_finished=_retry_finished(tables),
            set_paused=_set_paused(tables),
            list_queues=_list_queues(tables),
        )


def _notify(tables: QueueTables, message: ColumnElement[str]) -> ColumnElement[object]:
    return func.pg_notify(notify_channel(tables.schema), message)


def _enqueue(tables: QueueTables) -> Executable:
    """Insert any number of jobs in one statement from parallel arrays (``unnest``).

    Ids are drawn from the sequence up front so each input row (by ordinality) can be matched to
    its id; a row whose dedupe key is already held by a live job is skipped by ``ON CONFLICT`` and
    comes back with ``created = false`` so the caller can look the holder up.
    """
    jobs = tables.jobs
    source = (
        text(_ENQUEUE_SOURCE.format(schema=tables.schema))
        .bindparams(*(bindparam(name, type_=Text) for name in ENQUEUE_COLUMNS))
        .columns(
            column("id", BigInteger),
            column("ord", BigInteger),
            column("task", Text),
            column("queue", Text),
            column("payload", JSONB),
            column("priority", SmallInteger),
            column("max_attempts", Integer),
            column("run_at", DateTime(timezone=True)),
            column("dedupe_key", Text),
        )
        .cte("input")
    )
    inserted = (
        insert(jobs)
        .from_select(
            ["id", "task", "queue", "payload", "priority", "max_attempts", "run_at", "dedupe_key"],
            select(
                source.c.id,
                source.c.task,
                source.c.queue,
                source.c.payload,
                source.c.priority,
                source.c.max_attempts,
                source.c.run_at,
                source.c.dedupe_key,
            ),
        )
        .on_conflict_do_nothing(
            index_elements=[jobs.c.dedupe_key], index_where=text(LIVE_PREDICATE)
        )
        .returning(jobs.c.id)
        .cte("inserted")
    )
    created = or_(source.c.dedupe_key.is_(None), source.c.id.in_(select(inserted.c.id)))
    return select(
        func.json_agg(aggregate_order_by(source.c.id, source.c.ord), type_=JSON).label("ids"),
        func.json_agg(source.c.ord, type_=JSON).filter(~created).label("skipped"),
    )


def _live_ids_by_dedupe_key(tables: QueueTables) -> Executable:
    jobs = tables.jobs
    return select(jobs.c.dedupe_key, jobs.c.id).where(
        jobs.c.dedupe_key == func.any(bindparam("keys", type_=ARRAY(Text))),
        jobs.c.state.in_(["queued", "running"]),
    )


def job_columns(tables: QueueTables) -> Select[tuple[object, ...]]:
    jobs = tables.jobs
    return select(
        jobs.c.id,
        jobs.c.task,
        jobs.c.queue,
        jobs.c.state,
        jobs.c.attempt,
        jobs.c.max_attempts,
        jobs.c.priority,
        jobs.c.payload,
        jobs.c.result,
        jobs.c.error,
        jobs.c.created_at,
        jobs.c.started_at,
        jobs.c.finished_at,
        jobs.c.run_at,
        jobs.c.dedupe_key,
        jobs.c.cancel_requested,
        jobs.c.scheduled_at,
    )


def _get_job(tables: QueueTables) -> Executable:
    return job_columns(tables).where(tables.jobs.c.id == bindparam("job_id"))


def _cancel_queued(tables: QueueTables) -> Executable:
    jobs = tables.jobs
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), jobs.c.state == "queued")
        .values(state="cancelled", finished_at=func.now(), cancel_requested=True)
        .returning(jobs.c.id)
    )


def _cancel_running(tables: QueueTables) -> Executable:
    """Flag a running job for cancellation and tell its worker at commit."""
    jobs = tables.jobs
    message = func.json_build_object("reason", "cancel", "id", jobs.c.id).cast(Text)
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), jobs.c.state == "running")
        .values(cancel_requested=True)
        .returning(jobs.c.id, _notify(tables, message))
    )


def _retry_finished(tables: QueueTables) -> Executable:
    """Queue a failed or cancelled job again, now, with at least one attempt left.

    Refused (no row) when another live job holds the same dedupe key.
    """
    jobs = tables.jobs
    holder = jobs.alias("holder")
    key_is_free = ~(
        select(holder.c.id)
        .where(
            holder.c.dedupe_key == jobs.c.dedupe_key,
            holder.c.state.in_(["queued", "running"]),
        )
        .exists()
    )
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            jobs.c.state.in_(["failed", "cancelled"]),
            case((jobs.c.dedupe_key.is_(None), true()), else_=key_is_free),
        )
        .values(
            state="queued",
            run_at=func.now(),
            finished_at=None,
            started_at=None,
            cancel_requested=False,
            worker_id=None,
            max_attempts=func.greatest(jobs.c.max_attempts, jobs.c.attempt + 1),
        )
        .returning(
            jobs.c.id,
            _notify(tables, wake_message("retry", func.json_build_array(jobs.c.task))),
        )
    )


def _set_paused(tables: QueueTables) -> Executable:
    queues = tables.queues
    paused = bindparam("paused", type_=queues.c.paused.type)
    statement = insert(queues).values(
        name=bindparam("name"),
        paused=paused,
        paused_at=case((paused, func.now()), else_=None),
        updated_at=func.now(),
    )
    return statement.on_conflict_do_update(
        index_elements=[queues.c.name],
        set_={
            "paused": statement.excluded.paused,
            "paused_at": case(
                (and_(statement.excluded.paused, ~queues.c.paused), func.now()),
                (statement.excluded.paused, queues.c.paused_at),
                else_=None,
            ),
            "updated_at": func.now(),
        },
    ).returning(
        queues.c.name,
        case((queues.c.paused, None), else_=_notify(tables, wake_message("resume"))),
    )


def _list_queues(tables: QueueTables) -> Executable:
    queues = tables.queues
    return select(queues.c.name, queues.c.paused, queues.c.paused_at).order_by(queues.c.name)
