"""What producers and operators run on jobs: the bulk enqueue, reads, cancel, retry, pause."""

from __future__ import annotations

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
    false,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by, insert
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables, finished_channel
from pgq_sa._sql.shared import (
    ENQUEUE_INPUT,
    INSERTED_COLUMNS,
    LIVE_PREDICATE,
    announce_finished_sql,
    in_states,
    live_states,
    new_jobs_source,
    notify,
    wake_message,
)
from pgq_sa._sql.workflows import UNBLOCK_NOTICES, unblock_ctes


def enqueue(tables: QueueTables) -> Executable:
    """Insert any number of jobs in one statement from parallel arrays (``unnest``).

    Ids are drawn from the sequence up front so each input row (by ordinality) can be matched to
    its id; a row whose dedupe key is already held by a live job is skipped by ``ON CONFLICT`` and
    comes back with ``created = false`` so the caller can look the holder up.
    """
    jobs = tables.jobs
    source = (
        text(new_jobs_source(tables.schema, ENQUEUE_INPUT))
        .bindparams(*(bindparam(name, type_=Text) for name, _, _ in ENQUEUE_INPUT))
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


def live_ids_by_dedupe_key(tables: QueueTables) -> Executable:
    """The unfinished jobs holding ``keys``: live ones, and waiting workflow steps (which hold
    their keys from enqueue, see migration step 0005)."""
    jobs = tables.jobs
    return select(jobs.c.dedupe_key, jobs.c.id).where(
        jobs.c.dedupe_key == func.any(bindparam("keys", type_=ARRAY(Text))),
        in_states(jobs.c.state, "queued", "running", "waiting"),
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
        jobs.c.workflow_id,
    )


def get_job(tables: QueueTables) -> Executable:
    return job_columns(tables).where(tables.jobs.c.id == bindparam("job_id"))


def mark_awaited(tables: QueueTables) -> Executable:
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
        (queued, notify(tables, wake_message("awaited", func.json_build_array(jobs.c.task)))),
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


def cancel_queued(tables: QueueTables) -> Executable:
    """Cancel a job that has not started (queued, or a waiting workflow step), announce it to its
    waiters, and settle its workflow dependents like any finish."""
    s = tables.schema
    return (
        text(
            f"""
WITH RECURSIVE done AS (
    UPDATE "{s}".jobs AS j
       SET state = 'cancelled', finished_at = now(), cancel_requested = true
     WHERE j.id = :job_id AND j.state IN ('queued', 'waiting')
    RETURNING j.id, j.state, j.task, j.awaited, j.workflow_id
),
notified AS ({announce_finished_sql(finished_channel(s), "done")}
),{unblock_ctes(s, "done")}
SELECT done.id, (SELECT count(*) FROM notified) + {UNBLOCK_NOTICES} AS notices FROM done
"""
        )
        .bindparams(bindparam("job_id", type_=BigInteger))
        .columns(column("id", BigInteger), column("notices", BigInteger))
    )


def cancel_running(tables: QueueTables) -> Executable:
    """Flag a running job for cancellation and tell its worker at commit."""
    jobs = tables.jobs
    message = func.json_build_object("reason", "cancel", "id", jobs.c.id).cast(Text)
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), in_states(jobs.c.state, "running"))
        .values(cancel_requested=True)
        .returning(jobs.c.id, notify(tables, message))
    )


def retry_finished(tables: QueueTables) -> Executable:
    """Queue a failed or cancelled job again, now, with at least one attempt left.

    Refused (no row) when another unfinished job holds the same dedupe key, and for workflow
    steps: a step runs again with ``retry_workflow``, which also makes it wait for its
    dependencies and revives the steps its failure cancelled.
    """
    jobs = tables.jobs
    holder = jobs.alias("holder")
    key_is_free = ~(
        select(holder.c.id)
        .where(
            holder.c.dedupe_key == jobs.c.dedupe_key,
            in_states(holder.c.state, "queued", "running", "waiting"),
        )
        .exists()
    )
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            in_states(jobs.c.state, "failed", "cancelled"),
            jobs.c.workflow_id.is_(None),
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
            notify(tables, wake_message("retry", func.json_build_array(jobs.c.task))),
        )
    )


def set_paused(tables: QueueTables) -> Executable:
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
        case((queues.c.paused, None), else_=notify(tables, wake_message("resume"))),
    )


def list_queues(tables: QueueTables) -> Executable:
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


def live_job_counts(tables: QueueTables) -> Executable:
    """Live jobs (waiting workflow steps included) per queue, task and state, how many queued
    ones are due, and how long the oldest due one has waited (seconds): the queue-depth gauges,
    read at scrape time."""
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
        .where(or_(live_states(jobs.c.state), in_states(jobs.c.state, "waiting")))
        .group_by(jobs.c.queue, jobs.c.task, jobs.c.state)
        .order_by(jobs.c.queue, jobs.c.task, jobs.c.state)
    )


# --- workers -----------------------------------------------------------------------------------
