"""Every SQL statement pgq_sa runs, built once per queue schema as SQLAlchemy Core executables.

No I/O here: builders take the tables and return statements whose inputs are all bind parameters,
so SQLAlchemy's compiled cache and the drivers' prepared statements are reused for every call.
Producers, workers, the CLI and the dashboard all execute these same objects; nothing else in the
package writes SQL for the queue's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Integer,
    Interval,
    Select,
    SmallInteger,
    Text,
    and_,
    any_,
    bindparam,
    case,
    column,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by, insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement, Sequence, Table
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.expression import ColumnClause, ColumnElement, Executable

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


def _claimed_sql(alias: str) -> str:
    """``CLAIMED_COLUMNS`` of the table ``alias``, for a RETURNING list in SQL text."""
    return ", ".join(f"{alias}.{name}" for name in CLAIMED_COLUMNS)


def _claimed_types(tables: QueueTables) -> list[ColumnClause[Any]]:
    """``CLAIMED_COLUMNS`` typed as the jobs table types them, for ``TextClause.columns``."""
    return [column(name, tables.jobs.c[name].type) for name in CLAIMED_COLUMNS]


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
_ENQUEUE_SOURCE = """
SELECT nextval('"{schema}".jobs_id_seq') AS id, t.ord, t.task, t.queue,
       nullif(t.payload, 'null'::jsonb) AS payload,
       t.priority::smallint AS priority, t.max_attempts::integer AS max_attempts,
       coalesce(t.run_at::timestamptz,
                now() + t.delay::double precision * interval '1 second') AS run_at,
       t.dedupe_key, nullif(t.meta, 'null'::jsonb) AS meta
  FROM ROWS FROM (
         json_array_elements_text(CAST(:task AS json)),
         json_array_elements_text(CAST(:queue AS json)),
         jsonb_array_elements(CAST(:payload AS jsonb)),
         json_array_elements_text(CAST(:priority AS json)),
         json_array_elements_text(CAST(:max_attempts AS json)),
         json_array_elements_text(CAST(:run_at AS json)),
         json_array_elements_text(CAST(:delay AS json)),
         json_array_elements_text(CAST(:dedupe_key AS json)),
         jsonb_array_elements(CAST(:meta AS jsonb))
       ) WITH ORDINALITY AS t(task, queue, payload, priority, max_attempts, run_at, delay,
                              dedupe_key, meta, ord)
"""


def _one_second() -> ColumnElement[object]:
    return literal_column("interval '1 second'", type_=Interval)


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


@dataclass(frozen=True)
class Statements:
    """The statements of one queue schema."""

    tables: QueueTables
    enqueue: Executable
    live_ids_by_dedupe_key: Executable
    get_job: Executable
    mark_awaited: Executable
    cancel_queued: Executable
    cancel_running: Executable
    retry_finished: Executable
    set_paused: Executable
    list_queues: Executable
    live_job_counts: Executable
    register_worker: Executable
    heartbeat: Executable
    deregister_worker: Executable
    claim: Executable
    claim_in_queues: Executable
    finish: Executable
    finish_and_claim: Executable
    finish_and_claim_in_queues: Executable
    hand_back: Executable
    next_run_at: Executable
    rescue: Executable
    prune_succeeded: Executable
    prune_failed: Executable
    upsert_limits: Executable
    lock_limits: Executable
    claim_limited: Executable
    upsert_schedules: Executable
    touch_schedules: Executable
    fire_schedule: Executable
    list_schedules: Executable
    set_schedule_enabled: Executable
    monitoring: MonitoringStatements

    @classmethod
    def build(cls, tables: QueueTables) -> Statements:
        return cls(
            tables=tables,
            enqueue=_enqueue(tables),
            live_ids_by_dedupe_key=_live_ids_by_dedupe_key(tables),
            get_job=_get_job(tables),
            mark_awaited=_mark_awaited(tables),
            cancel_queued=_cancel_queued(tables),
            cancel_running=_cancel_running(tables),
            retry_finished=_retry_finished(tables),
            set_paused=_set_paused(tables),
            list_queues=_list_queues(tables),
            live_job_counts=_live_job_counts(tables),
            register_worker=_register_worker(tables),
            heartbeat=_heartbeat(tables),
            deregister_worker=_deregister_worker(tables),
            claim=_claim(tables, in_queues=False),
            claim_in_queues=_claim(tables, in_queues=True),
            finish=_finish(tables),
            finish_and_claim=_finish_and_claim(tables, in_queues=False),
            finish_and_claim_in_queues=_finish_and_claim(tables, in_queues=True),
            hand_back=_hand_back(tables),
            next_run_at=_next_run_at(tables),
            rescue=_rescue(tables),
            prune_succeeded=_prune(tables, "succeeded"),
            prune_failed=_prune(tables, "failed", "cancelled"),
            upsert_limits=_upsert_limits(tables),
            lock_limits=_lock_limits(tables),
            claim_limited=_claim_limited(tables),
            upsert_schedules=_upsert_schedules(tables),
            touch_schedules=_touch_schedules(tables),
            fire_schedule=_fire_schedule(tables),
            list_schedules=_list_schedules(tables),
            set_schedule_enabled=_set_schedule_enabled(tables),
            monitoring=MonitoringStatements.build(tables),
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
            column("meta", JSONB),
        )
        .cte("input")
    )
    inserted = (
        insert(jobs)
        .from_select(list(INSERTED_COLUMNS), select(*(source.c[name] for name in INSERTED_COLUMNS)))
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
        in_states(jobs.c.state, "queued", "running"),
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


def _mark_awaited(tables: QueueTables) -> Executable:
    """Ask for a NOTIFY when an unfinished job finishes (``Queue.wait``).

    The UPDATE takes the row lock, so it runs before or after any statement finishing the job,
    never beside it: either that statement sees the flag and announces the job, or the job is
    already finished when the waiter reads it next.
    A queued job is announced to the workers again (a wake-up for its task): a claim that ran
    while this UPDATE held the row skipped it, and its enqueue's NOTIFY is spent.
    """
    jobs = tables.jobs
    queued = in_states(jobs.c.state, "queued")
    wake = case(
        (queued, _notify(tables, wake_message("awaited", func.json_build_array(jobs.c.task)))),
        else_=None,
    )
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            in_states(jobs.c.state, "queued", "running"),
            jobs.c.awaited.is_(false()),
        )
        .values(awaited=True)
        .returning(jobs.c.id, wake)
    )


def _announce_finished(tables: QueueTables, jobs: Table) -> ColumnElement[object]:
    """A NOTIFY of one finished job's id on the finished channel, if someone waits for it."""
    message = func.json_build_object("ids", func.json_build_array(jobs.c.id)).cast(Text)
    return case(
        (jobs.c.awaited, func.pg_notify(finished_channel(tables.schema), message)),
        else_=None,
    )


def _cancel_queued(tables: QueueTables) -> Executable:
    jobs = tables.jobs
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), in_states(jobs.c.state, "queued"))
        .values(state="cancelled", finished_at=func.now(), cancel_requested=True)
        .returning(jobs.c.id, _announce_finished(tables, jobs))
    )


def _cancel_running(tables: QueueTables) -> Executable:
    """Flag a running job for cancellation and tell its worker at commit."""
    jobs = tables.jobs
    message = func.json_build_object("reason", "cancel", "id", jobs.c.id).cast(Text)
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), in_states(jobs.c.state, "running"))
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
            in_states(holder.c.state, "queued", "running"),
        )
        .exists()
    )
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            in_states(jobs.c.state, "failed", "cancelled"),
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
    """Every queue that has live jobs or a stored setting, with its pause state and backlog."""
    jobs, queues = tables.jobs, tables.queues
    live = (
        select(
            jobs.c.queue,
            func.count().filter(in_states(jobs.c.state, "queued")).label("queued"),
            func.count().filter(in_states(jobs.c.state, "running")).label("running"),
        )
        .where(live_states(jobs.c.state))
        .group_by(jobs.c.queue)
        .subquery("live")
    )
    name = func.coalesce(queues.c.name, live.c.queue).label("name")
    return (
        select(
            name,
            func.coalesce(queues.c.paused, false()).label("paused"),
            queues.c.paused_at,
            func.coalesce(live.c.queued, 0).label("queued"),
            func.coalesce(live.c.running, 0).label("running"),
        )
        .select_from(live.join(queues, queues.c.name == live.c.queue, full=True))
        .order_by(name)
    )


def _live_job_counts(tables: QueueTables) -> Executable:
    """Live jobs per queue, task and state, how many queued ones are due, and how long the
    oldest due one has waited (seconds): the queue-depth gauges, read at scrape time."""
    jobs = tables.jobs
    due = and_(in_states(jobs.c.state, "queued"), jobs.c.run_at <= func.now())
    oldest = func.min(jobs.c.run_at).filter(due)
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            jobs.c.state,
            func.count().label("jobs"),
            func.count().filter(due).label("due"),
            func.coalesce(func.extract("epoch", func.now() - oldest), 0).label("oldest_due_age"),
        )
        .where(in_states(jobs.c.state, "queued", "running"))
        .group_by(jobs.c.queue, jobs.c.task, jobs.c.state)
        .order_by(jobs.c.queue, jobs.c.task, jobs.c.state)
    )


# --- workers -----------------------------------------------------------------------------------


def _register_worker(tables: QueueTables) -> Executable:
    workers = tables.workers
    statement = insert(workers).values(
        id=bindparam("worker_id", type_=workers.c.id.type),
        name=bindparam("name"),
        kind=bindparam("kind"),
        hostname=bindparam("hostname"),
        pid=bindparam("pid"),
        queues=bindparam("queues", type_=ARRAY(Text)),
        tasks=bindparam("tasks", type_=ARRAY(Text)),
        concurrency=bindparam("concurrency"),
    )
    return statement.on_conflict_do_update(
        index_elements=[workers.c.id], set_={"heartbeat_at": func.now()}
    )


def _heartbeat(tables: QueueTables) -> Executable:
    """One statement per worker per interval: refresh the worker's row, and report which of its
    running jobs were asked to stop (the polling side of cancellation)."""
    s = tables.schema
    return (
        text(
            f"""
WITH beat AS (
    UPDATE "{s}".workers SET heartbeat_at = now() WHERE id = :worker_id RETURNING id
)
SELECT (SELECT count(*) FROM beat) AS alive,
       array(SELECT id FROM "{s}".jobs
              WHERE state = 'running' AND worker_id = :worker_id AND cancel_requested) AS cancel
"""
        )
        .bindparams(bindparam("worker_id", type_=tables.workers.c.id.type))
        .columns(column("alive", BigInteger), column("cancel", ARRAY(BigInteger)))
    )


def _deregister_worker(tables: QueueTables) -> Executable:
    workers = tables.workers
    return workers.delete().where(workers.c.id == bindparam("worker_id", type_=workers.c.id.type))


def _claim(tables: QueueTables, *, in_queues: bool) -> Executable:
    """Lease up to ``limit`` due, queued jobs of the worker's tasks (and queues), highest priority
    first, skipping rows other claimers hold and queues that are paused."""
    jobs, queues = tables.jobs, tables.queues
    conditions = [
        in_states(jobs.c.state, "queued"),
        jobs.c.run_at <= func.now(),
        jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
        jobs.c.queue.not_in(select(queues.c.name).where(queues.c.paused)),
    ]
    if in_queues:
        conditions.append(jobs.c.queue == func.any(bindparam("queues", type_=ARRAY(Text))))
    picked = (
        select(jobs.c.id)
        .where(*conditions)
        .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    return (
        update(jobs)
        .where(jobs.c.id == any_(func.array(select(picked.c.id).scalar_subquery())))
        .values(
            state="running",
            attempt=jobs.c.attempt + 1,
            worker_id=bindparam("worker_id", type_=jobs.c.worker_id.type),
            started_at=func.now(),
        )
        .returning(*(jobs.c[name] for name in CLAIMED_COLUMNS))
    )


# The outcomes of many attempts, one JSON array per column (see ``decisions.finish_parameters``),
# written under their leases; ``notified`` announces the finished ids that someone waits for
# (``awaited``, set by ``mark_awaited``): a NOTIFY serialises the commits of every transaction
# that sends one, so finishes nobody waits for send none. Rows are reached through
# ``id = any(ARRAY(...))`` so that the generic plan the workers' lanes use is an index lookup
# whatever the statistics. Shared by ``finish`` and ``finish_and_claim``, which must reference
# ``notified`` (a SELECT CTE runs only if read).
_FINISH_CTES = """
v AS (
    SELECT t.id::bigint AS id, t.attempt::integer AS attempt, t.outcome,
           t.delay::double precision AS delay,
           nullif(t.result, 'null'::jsonb) AS result, nullif(t.error, 'null'::jsonb) AS error
      FROM ROWS FROM (
             json_array_elements_text(CAST(:ids AS json)),
             json_array_elements_text(CAST(:attempts AS json)),
             json_array_elements_text(CAST(:outcomes AS json)),
             json_array_elements_text(CAST(:delays AS json)),
             jsonb_array_elements(CAST(:results AS jsonb)),
             jsonb_array_elements(CAST(:errors AS jsonb))
           ) AS t(id, attempt, outcome, delay, result, error)
),
done AS (
    UPDATE "{s}".jobs AS j
       SET state = (CASE WHEN v.outcome = 'queued' AND j.cancel_requested THEN 'cancelled'
                         ELSE v.outcome END)::"{s}".job_state,
           run_at = CASE WHEN v.outcome = 'queued'
                         THEN now() + coalesce(v.delay, 0) * interval '1 second'
                         ELSE j.run_at END,
           finished_at = CASE WHEN v.outcome = 'queued' AND NOT j.cancel_requested
                              THEN NULL ELSE now() END,
           worker_id = CASE WHEN v.outcome = 'queued' AND NOT j.cancel_requested
                            THEN NULL ELSE j.worker_id END,
           result = v.result,
           error = coalesce(v.error, j.error)
      FROM v
     WHERE j.id = any(ARRAY(SELECT v.id FROM v)) AND j.id = v.id AND j.attempt = v.attempt
       AND (j.worker_id = :worker_id AND j.state = 'running') IS TRUE
    RETURNING j.id, j.state, j.run_at, j.awaited
),
notified AS ({announce_done}
)"""


def _announce_finished_sql(channel: str, rows: str) -> str:
    """SQL selecting one NOTIFY on ``channel`` of the ids in ``rows`` (a CTE returning ``id``,
    ``state`` and ``awaited``) that ended and are awaited; none when there are none. A message over
    PostgreSQL's 8000-byte limit becomes ``{"ids": null}`` (waiters then re-read their job)."""
    return f"""
    SELECT pg_notify('{channel}',
                     CASE WHEN octet_length(m.message) <= 7900 THEN m.message
                          ELSE '{{"ids": null}}' END)
      FROM (SELECT json_build_object('ids', json_agg(id))::text AS message
              FROM {rows} WHERE state <> 'queued' AND awaited HAVING count(*) > 0) AS m"""


def _finish_ctes(s: str) -> str:
    """``_FINISH_CTES`` for schema ``s``."""
    return _FINISH_CTES.format(
        s=s, announce_done=_announce_finished_sql(finished_channel(s), "done")
    )


_FINISH_PARAMETERS = ("ids", "attempts", "outcomes", "delays", "results", "errors")


def _finish(tables: QueueTables) -> Executable:
    """Record many outcomes at once: succeeded, failed, or queued again for a retry.

    Every row is guarded by its lease (job id + this worker + the attempt it claimed, still
    running): an outcome whose lease was lost matches nothing and is left out of the result. A
    retry of a job whose cancellation was requested ends ``cancelled`` instead. Finished ids are
    announced with one NOTIFY so ``Queue.wait`` wakes.
    """
    s = tables.schema
    ctes = _finish_ctes(s)
    return (
        text(
            f"""
WITH {ctes}
SELECT done.id, done.state::text AS state, done.run_at,
       (SELECT count(*) FROM notified) AS notices
  FROM done
"""
        )
        .bindparams(
            bindparam("worker_id", type_=tables.jobs.c.worker_id.type),
            *(bindparam(name, type_=Text) for name in _FINISH_PARAMETERS),
        )
        .columns(
            column("id", BigInteger),
            column("state", Text),
            column("run_at", DateTime(timezone=True)),
            column("notices", BigInteger),
        )
    )


def _finish_and_claim(tables: QueueTables, *, in_queues: bool) -> Executable:
    """``finish`` and ``claim`` in one statement: one round trip and one commit per batch.

    The outcomes are written exactly as ``finish`` writes them (same leases, same NOTIFY) and the
    next jobs are leased exactly as ``claim`` leases them. Every part of one statement sees the
    same snapshot, so a job this statement queues again for a retry is not claimed by it (it was
    still running in the snapshot); the two parts touch disjoint rows. Rows come back tagged:
    ``claimed`` true for a leased job (the claim's columns), and one last row with ``claimed``
    false that sums up the outcomes written (``written_ids`` and ``written_states``, or NULL when
    none were; the earliest ``next_run_at`` of a retry; ``notices``): one row, not one per
    outcome, for the driver to decode.

    ``picked`` reads ``done`` (an always-true count, evaluated once before its scan) so that the
    outcomes are written before any queued row is locked. ``FOR UPDATE`` in READ COMMITTED may
    keep a lock on a row it then skips (claimed meanwhile by another statement, so possibly a
    row whose outcome another statement is writing); a statement that could wait in ``done``
    while holding such locks could deadlock with another doing the same (seen once in a
    million jobs before this ordering). With ``done`` first, a statement waits only while it
    holds no claim locks, and the claim part never waits (SKIP LOCKED, its own rows).
    """
    s = tables.schema
    jobs = tables.jobs
    ctes = _finish_ctes(s)
    in_queue = "\n       AND c.queue = any(:queues)" if in_queues else ""
    statement = text(
        f"""
WITH {ctes},
picked AS (
    SELECT c.id
      FROM "{s}".jobs AS c
     WHERE c.state = 'queued' AND c.run_at <= now() AND c.task = any(:tasks)
       AND (c.queue NOT IN (SELECT q.name FROM "{s}".queues AS q WHERE q.paused)){in_queue}
       AND (SELECT count(*) FROM done) >= 0
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE "{s}".jobs AS c
       SET state = 'running', attempt = c.attempt + 1, started_at = now(),
           worker_id = :worker_id
     WHERE c.id = any(ARRAY(SELECT picked.id FROM picked))
    RETURNING {_claimed_sql("c")}
)
SELECT true AS claimed, {", ".join(CLAIMED_COLUMNS)},
       NULL::bigint[] AS written_ids, NULL::text[] AS written_states,
       NULL::timestamptz AS next_run_at, NULL::bigint AS notices
  FROM claimed
UNION ALL
SELECT false, {", ".join(["NULL"] * len(CLAIMED_COLUMNS))},
       array_agg(done.id), array_agg(done.state::text),
       min(done.run_at) FILTER (WHERE done.state = 'queued'), (SELECT count(*) FROM notified)
  FROM done
"""
    )
    parameters = [
        bindparam("worker_id", type_=jobs.c.worker_id.type),
        bindparam("tasks", type_=ARRAY(Text)),
        bindparam("limit", type_=Integer),
        *(bindparam(name, type_=Text) for name in _FINISH_PARAMETERS),
    ]
    if in_queues:
        parameters.append(bindparam("queues", type_=ARRAY(Text)))
    return statement.bindparams(*parameters).columns(
        column("claimed", Boolean),
        *_claimed_types(tables),
        column("written_ids", ARRAY(BigInteger)),
        column("written_states", ARRAY(Text)),
        column("next_run_at", DateTime(timezone=True)),
        column("notices", BigInteger),
    )


def _hand_back(tables: QueueTables) -> Executable:
    """Give the jobs this worker holds, except ``keep``, back to the queue, their attempt not
    counted, and wake the other workers. At shutdown ``keep`` is empty (what did not finish in
    the grace period goes back); after a failed claim it holds the jobs the worker knows about,
    so jobs claimed by a statement whose answer was lost are returned."""
    s = tables.schema
    channel = notify_channel(s)
    return (
        text(
            f"""
WITH back AS (
    UPDATE "{s}".jobs
       SET state = 'queued', worker_id = NULL, started_at = NULL,
           attempt = greatest(attempt - 1, 0), run_at = now()
     WHERE state = 'running' AND worker_id = :worker_id AND id <> ALL(:keep)
    RETURNING id, task
)
SELECT count(*) AS handed_back,
       pg_notify('{channel}', json_build_object('reason', 'handback',
                                                'tasks', json_agg(DISTINCT task))::text)
  FROM back HAVING count(*) > 0
"""
        )
        .bindparams(
            bindparam("worker_id", type_=tables.jobs.c.worker_id.type),
            bindparam("keep", type_=ARRAY(BigInteger)),
        )
        .columns(column("handed_back", BigInteger))
    )


def _next_run_at(tables: QueueTables) -> Executable:
    """When the earliest queued job of these tasks becomes due. Read only when a worker starts or
    its listener reconnects, i.e. when a NOTIFY about a delayed job may have been missed."""
    jobs = tables.jobs
    return select(func.min(jobs.c.run_at).label("run_at")).where(
        in_states(jobs.c.state, "queued"),
        jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
    )


def _rescue(tables: QueueTables) -> Executable:
    """Requeue (or fail, when out of attempts) the jobs of workers whose heartbeat is older than
    ``lease_timeout`` seconds, and forget those workers. Safe when every worker runs it at once:
    dead workers and their jobs are taken with SKIP LOCKED, so each is rescued by one of them.
    The attempt that was running counts. Running jobs whose worker row is gone are rescued too.
    ``jobs`` lists the rescued jobs (id, task, queue, attempt, lost worker, new state). Jobs it
    ends (out of attempts, or cancelled) are announced to their waiters like any finish.
    """
    s = tables.schema
    channel = notify_channel(s)
    return (
        text(
            f"""
WITH dead AS (
    SELECT id FROM "{s}".workers
     WHERE heartbeat_at < now() - :lease_timeout * interval '1 second'
       FOR UPDATE SKIP LOCKED
),
orphans AS (
    SELECT j.id, j.worker_id FROM "{s}".jobs AS j
     WHERE j.state = 'running'
       AND (j.worker_id IN (SELECT id FROM dead)
            OR NOT EXISTS (SELECT 1 FROM "{s}".workers AS w WHERE w.id = j.worker_id))
       FOR UPDATE OF j SKIP LOCKED
),
rescued AS (
    UPDATE "{s}".jobs AS j
       SET state = (CASE WHEN j.attempt >= j.max_attempts OR j.cancel_requested
                         THEN (CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END)
                         ELSE 'queued' END)::"{s}".job_state,
           finished_at = CASE WHEN j.attempt >= j.max_attempts OR j.cancel_requested
                              THEN now() END,
           run_at = now(),
           worker_id = CASE WHEN j.attempt >= j.max_attempts OR j.cancel_requested
                            THEN j.worker_id END,
           error = json_build_object(
               'type', 'pgq_sa.WorkerLost',
               'message', 'worker ' || j.worker_id || ' stopped heartbeating for over '
                          || :lease_timeout || 's while running attempt ' || j.attempt
                          || ' of ' || j.max_attempts,
               'traceback', NULL,
               'attempt', j.attempt)::jsonb
      FROM orphans
     WHERE j.id = orphans.id
    RETURNING j.id, j.state, j.task, j.queue, j.attempt, orphans.worker_id AS lost_worker,
              j.awaited
),
forgotten AS (
    DELETE FROM "{s}".workers WHERE id IN (SELECT id FROM dead) RETURNING id
)
SELECT (SELECT count(*) FROM rescued WHERE state = 'queued') AS requeued,
       (SELECT count(*) FROM rescued WHERE state <> 'queued') AS failed,
       (SELECT count(*) FROM forgotten) AS workers,
       (SELECT json_agg(json_build_array(id, task, queue, attempt, lost_worker, state))
          FROM rescued) AS jobs,
       (SELECT pg_notify('{channel}',
                         json_build_object('reason', 'rescue',
                                           'tasks', json_agg(DISTINCT task))::text)
          FROM rescued WHERE state = 'queued' HAVING count(*) > 0) AS notified,
       ({_announce_finished_sql(finished_channel(s), "rescued")}) AS announced
"""
        )
        .bindparams(bindparam("lease_timeout", type_=Double))
        .columns(
            column("requeued", BigInteger),
            column("failed", BigInteger),
            column("workers", BigInteger),
            column("jobs", JSON),
        )
    )


def _prune(tables: QueueTables, *states: str) -> Executable:
    """Delete up to ``limit`` jobs in ``states`` finished more than ``age`` seconds ago."""
    jobs = tables.jobs
    oldest = (
        select(jobs.c.id)
        .where(
            in_states(jobs.c.state, *states),
            jobs.c.finished_at < func.now() - bindparam("age", type_=Double) * _one_second(),
        )
        .order_by(jobs.c.finished_at)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return jobs.delete().where(jobs.c.id.in_(oldest)).returning(jobs.c.id)


# --- cluster-wide limits -----------------------------------------------------------------------


def _upsert_limits(tables: QueueTables) -> Executable:
    """Record the concurrency and rate limits the worker's code declares (code is the source)."""
    s = tables.schema
    return text(
        f"""
INSERT INTO "{s}".task_limits AS l (task, concurrency, rate_count, rate_period, updated_at)
SELECT t.task, t.concurrency::integer, t.rate_count::integer, t.rate_period::double precision,
       now()
  FROM ROWS FROM (
         json_array_elements_text(CAST(:tasks AS json)),
         json_array_elements_text(CAST(:concurrency AS json)),
         json_array_elements_text(CAST(:rate_count AS json)),
         json_array_elements_text(CAST(:rate_period AS json))
       ) AS t(task, concurrency, rate_count, rate_period)
ON CONFLICT (task) DO UPDATE
   SET concurrency = excluded.concurrency, rate_count = excluded.rate_count,
       rate_period = excluded.rate_period, updated_at = now()
"""
    ).bindparams(
        *(
            bindparam(name, type_=Text)
            for name in ("tasks", "concurrency", "rate_count", "rate_period")
        )
    )


def _lock_limits(tables: QueueTables) -> Executable:
    """Serialise claims of limited tasks: the rows stay locked until the claim commits."""
    limits = tables.task_limits
    return (
        select(limits.c.task)
        .where(limits.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))))
        .order_by(limits.c.task)
        .with_for_update()
    )


def _claim_limited(tables: QueueTables) -> Executable:
    """Claim jobs of tasks with a cluster-wide concurrency and/or rate limit.

    Runs in the transaction that locked the tasks' limit rows (``lock_limits``), so this
    statement's snapshot already includes every claim that committed before: running jobs are
    counted exactly, and no two claimers can both take the last slot. The rate limit is a
    generic cell rate algorithm: ``window_start`` holds the theoretical arrival time, each start
    advances it by ``rate_period / rate_count``, with a burst of a tenth of the rate.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH limits AS (
    SELECT l.task,
           l.rate_period / l.rate_count AS spacing,
           greatest(l.rate_count / 10, 1) AS burst,
           l.rate_count IS NOT NULL AS rated,
           greatest(0, least(
               :limit,
               coalesce(l.concurrency - (SELECT count(*) FROM "{s}".jobs AS r
                                          WHERE r.task = l.task AND r.state = 'running'),
                        :limit),
               coalesce(floor(extract(epoch FROM now() - greatest(coalesce(l.window_start, now()),
                                                              now()))
                              / (l.rate_period / l.rate_count)
                              + greatest(l.rate_count / 10, 1))::integer,
                        :limit))) AS allowed
      FROM "{s}".task_limits AS l
     WHERE l.task = ANY(CAST(:tasks AS text[]))
),
picked AS (
    SELECT c.id
      FROM limits AS a
      CROSS JOIN LATERAL (
          SELECT j.id, j.priority, j.run_at
            FROM "{s}".jobs AS j
           WHERE j.state = 'queued' AND j.task = a.task AND j.run_at <= now()
             AND j.queue NOT IN (SELECT name FROM "{s}".queues WHERE paused)
             AND (CAST(:queues AS text[]) IS NULL OR j.queue = ANY(CAST(:queues AS text[])))
           ORDER BY j.priority DESC, j.run_at, j.id
           LIMIT a.allowed
             FOR UPDATE OF j SKIP LOCKED
      ) AS c
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT :limit
),
claimed AS (
    UPDATE "{s}".jobs AS j
       SET state = 'running', attempt = j.attempt + 1, worker_id = :worker_id,
           started_at = now()
     WHERE j.id = any(ARRAY(SELECT picked.id FROM picked))
    RETURNING {_claimed_sql("j")}
),
paced AS (
    UPDATE "{s}".task_limits AS l
       SET window_start = greatest(coalesce(l.window_start, now()), now())
                          + n.started * (l.rate_period / l.rate_count) * interval '1 second'
      FROM (SELECT task, count(*) AS started FROM claimed GROUP BY task) AS n
     WHERE l.task = n.task AND l.rate_count IS NOT NULL
    RETURNING l.task
)
SELECT claimed.*, (SELECT count(*) FROM paced) AS paced FROM claimed
"""
        )
        .bindparams(
            bindparam("worker_id", type_=tables.jobs.c.worker_id.type),
            bindparam("tasks", type_=ARRAY(Text)),
            bindparam("queues", type_=ARRAY(Text)),
            bindparam("limit", type_=Integer),
        )
        .columns(
            *_claimed_types(tables),
        )
    )


# --- periodic schedules ------------------------------------------------------------------------

_SCHEDULE_COLUMNS = (
    column("name", Text),
    column("enabled", Boolean),
    column("last_fire_at", DateTime(timezone=True)),
    column("updated_at", DateTime(timezone=True)),
)


def _upsert_schedules(tables: QueueTables) -> Executable:
    """Record the schedules a worker's code declares; a changed definition restarts its baseline.
    ``enabled`` (the operator's switch) and the last fire time are kept."""
    s = tables.schema
    return (
        text(
            f"""
INSERT INTO "{s}".schedules AS c (name, task, expression, timezone, missed, next_fire_at)
SELECT t.name, t.name, t.expression, t.timezone, t.missed, t.next_fire_at::timestamptz
  FROM ROWS FROM (
         json_array_elements_text(CAST(:names AS json)),
         json_array_elements_text(CAST(:expressions AS json)),
         json_array_elements_text(CAST(:timezones AS json)),
         json_array_elements_text(CAST(:missed AS json)),
         json_array_elements_text(CAST(:next_fire_at AS json))
       ) AS t(name, expression, timezone, missed, next_fire_at)
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
        .bindparams(
            *(
                bindparam(name, type_=Text)
                for name in ("names", "expressions", "timezones", "missed", "next_fire_at")
            )
        )
        .columns(*_SCHEDULE_COLUMNS)
    )


def _touch_schedules(tables: QueueTables) -> Executable:
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


def _fire_schedule(tables: QueueTables) -> Executable:
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


def _list_schedules(tables: QueueTables) -> Executable:
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


def _set_schedule_enabled(tables: QueueTables) -> Executable:
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

FINISHED_STATES = ("succeeded", "failed", "cancelled")
JOB_LIST_STATES: tuple[str | None, ...] = (None, *(status.value for status in JobStatus))


@dataclass(frozen=True)
class MonitoringStatements:
    """The read-only statements behind ``pgq-sa status``, ``jobs list``, ``workers`` and the
    dashboard (see :mod:`pgq_sa._monitoring`)."""

    clock: Executable
    task_backlog: Executable
    recent_finished: Executable
    unsuccessful_counts: Executable
    start_latency: Executable
    list_workers: Executable
    queue_settings: Executable
    list_jobs: dict[str | None, Executable]

    @classmethod
    def build(cls, tables: QueueTables) -> MonitoringStatements:
        return cls(
            clock=select(func.now().label("now")),
            task_backlog=_task_backlog(tables),
            recent_finished=_recent_finished(tables),
            unsuccessful_counts=_unsuccessful_counts(tables),
            start_latency=_start_latency(tables),
            list_workers=_list_workers(tables),
            queue_settings=_queue_settings(tables),
            list_jobs={status: _list_jobs(tables, status) for status in JOB_LIST_STATES},
        )


def _seconds_ago(name: str) -> ColumnElement[Any]:
    return func.now() - bindparam(name, type_=Double) * _one_second()


def _age(moment: ColumnElement[Any]) -> ColumnElement[float]:
    """Seconds from ``moment`` to the statement's ``now()``."""
    return func.extract("epoch", func.now() - moment).cast(Double)


def _task_backlog(tables: QueueTables) -> Executable:
    """Live jobs per (queue, task): due, scheduled for later, running, and the oldest due one."""
    jobs = tables.jobs
    queued = in_states(jobs.c.state, "queued")
    due = and_(queued, jobs.c.run_at <= func.now())
    oldest = func.min(jobs.c.run_at).filter(due)
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.count().filter(due).label("due"),
            func.count().filter(and_(queued, jobs.c.run_at > func.now())).label("scheduled"),
            func.count().filter(in_states(jobs.c.state, "running")).label("running"),
            oldest.label("oldest_due_at"),
            _age(oldest).label("oldest_wait"),
        )
        .where(live_states(jobs.c.state))
        .group_by(jobs.c.queue, jobs.c.task)
        .order_by(jobs.c.queue, jobs.c.task)
    )


def _recent_finished(tables: QueueTables) -> Executable:
    """Jobs finished in the last ``window`` seconds per (queue, task), by outcome, and how many
    of them in the last ``short_window`` seconds (a range of the finished-at index)."""
    jobs = tables.jobs
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.count().filter(in_states(jobs.c.state, "succeeded")).label("succeeded"),
            func.count().filter(in_states(jobs.c.state, "failed")).label("failed"),
            func.count().filter(in_states(jobs.c.state, "cancelled")).label("cancelled"),
            func.count().filter(jobs.c.finished_at > _seconds_ago("short_window")).label("short"),
        )
        .where(
            in_states(jobs.c.state, *FINISHED_STATES),
            jobs.c.finished_at > _seconds_ago("window"),
        )
        .group_by(jobs.c.queue, jobs.c.task)
    )


def _unsuccessful_counts(tables: QueueTables) -> Executable:
    """Failed and cancelled jobs still kept, per (queue, task): an index-only scan of their
    partial index (migration step 0002), never the succeeded history."""
    jobs = tables.jobs
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.count().filter(in_states(jobs.c.state, "failed")).label("failed"),
            func.count().filter(in_states(jobs.c.state, "cancelled")).label("cancelled"),
        )
        .where(in_states(jobs.c.state, "failed", "cancelled"))
        .group_by(jobs.c.queue, jobs.c.task)
    )


def _start_latency(tables: QueueTables) -> Executable:
    """How long recently started jobs waited from ``run_at`` to their start: count, p50, p95 and
    max per queue, plus one row for all queues (``queue`` NULL). The sample is the running jobs
    started in the last ``window`` seconds and the newest ``sample`` jobs finished in it (a
    bounded backward range of the finished-at index, whatever the throughput)."""
    jobs = tables.jobs
    started_recently = and_(
        jobs.c.started_at > _seconds_ago("window"), jobs.c.started_at >= jobs.c.run_at
    )
    wait = func.extract("epoch", jobs.c.started_at - jobs.c.run_at).cast(Double).label("wait")
    running = select(jobs.c.queue, wait).where(in_states(jobs.c.state, "running"), started_recently)
    finished = (
        select(jobs.c.queue, wait)
        .where(
            in_states(jobs.c.state, *FINISHED_STATES),
            jobs.c.finished_at > _seconds_ago("window"),
            started_recently,
        )
        .order_by(jobs.c.finished_at.desc())
        .limit(bindparam("sample", type_=Integer))
        .subquery("finished")
    )
    waits = running.union_all(select(finished.c.queue, finished.c.wait)).subquery("waits")
    return (
        select(
            waits.c.queue,
            func.count().label("started"),
            func.percentile_cont(0.5).within_group(waits.c.wait).cast(Double).label("p50"),
            func.percentile_cont(0.95).within_group(waits.c.wait).cast(Double).label("p95"),
            func.max(waits.c.wait).label("max"),
        )
        .group_by(func.grouping_sets(waits.c.queue, text("()")))
        .order_by(waits.c.queue.nulls_first())
    )


def _list_workers(tables: QueueTables) -> Executable:
    """Every registered worker (live, or dead and not yet forgotten by a rescue), with the
    heartbeat's age and how many jobs it runs."""
    jobs, workers = tables.jobs, tables.workers
    running = (
        select(func.count())
        .where(in_states(jobs.c.state, "running"), jobs.c.worker_id == workers.c.id)
        .scalar_subquery()
    )
    return select(
        workers.c.id,
        workers.c.name,
        workers.c.kind,
        workers.c.hostname,
        workers.c.pid,
        workers.c.queues,
        workers.c.tasks,
        workers.c.concurrency,
        workers.c.started_at,
        workers.c.heartbeat_at,
        _age(workers.c.heartbeat_at).label("heartbeat_age"),
        running.label("running"),
    ).order_by(workers.c.started_at, workers.c.name)


def _queue_settings(tables: QueueTables) -> Executable:
    queues = tables.queues
    return select(queues.c.name, queues.c.paused, queues.c.paused_at).order_by(queues.c.name)


def _list_jobs(tables: QueueTables, status: str | None) -> Executable:
    """The newest ``limit`` jobs, optionally of one state (a literal, so each variant can use its
    state's partial index), one task and one queue."""
    jobs = tables.jobs
    task = bindparam("task", type_=Text)
    queue = bindparam("queue", type_=Text)
    conditions = [
        or_(task.is_(None), jobs.c.task == task),
        or_(queue.is_(None), jobs.c.queue == queue),
    ]
    if status is not None:
        conditions.append(in_states(jobs.c.state, status))
    return (
        select(
            jobs.c.id,
            jobs.c.task,
            jobs.c.queue,
            jobs.c.state,
            jobs.c.attempt,
            jobs.c.max_attempts,
            jobs.c.priority,
            jobs.c.created_at,
            jobs.c.run_at,
            jobs.c.started_at,
            jobs.c.finished_at,
            jobs.c.worker_id,
            jobs.c.error["type"].astext.label("error_type"),
            jobs.c.error["message"].astext.label("error_message"),
        )
        .where(*conditions)
        .order_by(jobs.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


# --- tests (pgq_sa.testing) --------------------------------------------------------------------


def make_due(tables: QueueTables) -> Executable:
    """Make the queued jobs of ``tasks`` due now, delayed ones and pending retries included.
    Used only by :func:`pgq_sa.testing.run_due_jobs` with ``include_delayed=True``."""
    jobs = tables.jobs
    return (
        update(jobs)
        .where(
            in_states(jobs.c.state, "queued"),
            jobs.c.run_at > func.now(),
            jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
        )
        .values(run_at=func.now())
        .returning(jobs.c.id)
    )


# --- privileges --------------------------------------------------------------------------------

JOBS_ID_SEQUENCE = "jobs_id_seq"  # the sequence behind the identity column jobs.id
GRANTABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "USAGE"})


class Grant(ExecutableDDLElement):
    """``GRANT privileges ON <table | sequence | schema> TO role``.

    Every identifier (schema, table, sequence, columns, role) is quoted by the dialect's
    identifier preparer, never pasted; privileges come from a fixed list. ``columns`` limits a
    table privilege to those columns.
    """

    inherit_cache = False

    def __init__(
        self,
        privilege: str,
        target: Table | Sequence | str,
        role: str,
        columns: tuple[str, ...] = (),
    ) -> None:
        if privilege not in GRANTABLE:
            raise ValueError(f"unknown privilege {privilege!r}")
        if columns and not isinstance(target, Table):
            raise ValueError("column privileges need a table")
        if isinstance(target, Table):
            unknown = set(columns) - set(target.c.keys())
            if unknown:
                raise ValueError(f"{target.name} has no columns {sorted(unknown)}")
        self.privilege = privilege
        self.on = target
        self.role = role
        self.columns = columns


@compiles(Grant)
def _compile_grant(element: Grant, compiler: DDLCompiler, **kw: object) -> str:
    preparer = compiler.preparer
    target = element.on
    if isinstance(target, Table):
        on = "TABLE " + preparer.format_table(target)
    elif isinstance(target, Sequence):
        on = "SEQUENCE " + preparer.format_sequence(target)
    else:
        on = "SCHEMA " + preparer.quote_identifier(target)
    privilege = element.privilege
    if element.columns:
        privilege += " (" + ", ".join(preparer.quote(c) for c in element.columns) + ")"
    return f"GRANT {privilege} ON {on} TO {preparer.quote_identifier(element.role)}"


def jobs_id_sequence(tables: QueueTables) -> Sequence:
    return Sequence(JOBS_ID_SEQUENCE, schema=tables.schema)
