"""What every worker's maintenance runs: hand-back, crash rescue, retention."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Double,
    Integer,
    bindparam,
    column,
    func,
    select,
    text,
)
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables, finished_channel, notify_channel
from pgq_sa._sql.shared import announce_finished_sql, in_states, one_second
from pgq_sa._sql.workflows import UNBLOCK_NOTICES, unblock_ctes


def hand_back(tables: QueueTables) -> Executable:
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


def rescue(tables: QueueTables) -> Executable:
    """Requeue (or fail, when out of attempts) the jobs of workers whose heartbeat is older than
    their own lease (``lease_timeout``, the rescuer's, for rows of workers that stored none), and
    forget those workers. The rescuer (``worker_id``) never declares itself dead: if it runs
    this, it is alive, however late its own heartbeat is. Safe when every worker runs it at once:
    dead workers and their jobs are taken with SKIP LOCKED, so each is rescued by one of them.
    The attempt that was running counts. Running jobs whose worker row is gone are rescued too.
    ``jobs`` lists the rescued jobs (id, task, queue, attempt, lost worker, new state). Jobs it
    ends (out of attempts, or cancelled) are announced to their waiters like any finish, and
    settle their workflow dependents like any finish (:func:`pgq_sa._sql.workflows.unblock_ctes`).
    """
    s = tables.schema
    channel = notify_channel(s)
    return (
        text(
            f"""
WITH RECURSIVE dead AS (
    SELECT id, coalesce(lease_timeout, :lease_timeout) AS lease FROM "{s}".workers
     WHERE heartbeat_at < now() - coalesce(lease_timeout, :lease_timeout) * interval '1 second'
       AND id <> :worker_id
       FOR UPDATE SKIP LOCKED
),
orphans AS (
    SELECT j.id, j.worker_id,
           coalesce((SELECT d.lease FROM dead AS d WHERE d.id = j.worker_id), :lease_timeout)
               AS lease
      FROM "{s}".jobs AS j
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
                          || orphans.lease || 's while running attempt ' || j.attempt
                          || ' of ' || j.max_attempts,
               'traceback', NULL,
               'attempt', j.attempt)::jsonb
      FROM orphans
     WHERE j.id = orphans.id
    RETURNING j.id, j.state, j.task, j.queue, j.attempt, orphans.worker_id AS lost_worker,
              j.awaited, j.workflow_id
),
forgotten AS (
    DELETE FROM "{s}".workers WHERE id IN (SELECT id FROM dead) RETURNING id
),{unblock_ctes(s, "rescued")}
SELECT (SELECT count(*) FROM rescued WHERE state = 'queued') AS requeued,
       (SELECT count(*) FROM rescued WHERE state <> 'queued') AS failed,
       (SELECT count(*) FROM forgotten) AS workers,
       (SELECT json_agg(json_build_array(id, task, queue, attempt, lost_worker, state,
                                         workflow_id))
          FROM rescued) AS jobs,
       (SELECT pg_notify('{channel}',
                         json_build_object('reason', 'rescue',
                                           'tasks', json_agg(DISTINCT task))::text)
          FROM rescued WHERE state = 'queued' HAVING count(*) > 0) AS notified,
       ({announce_finished_sql(finished_channel(s), "rescued")}) AS announced,
       {UNBLOCK_NOTICES} AS unblocking
"""
        )
        .bindparams(
            bindparam("lease_timeout", type_=Double),
            bindparam("worker_id", type_=tables.workers.c.id.type),
        )
        .columns(
            column("requeued", BigInteger),
            column("failed", BigInteger),
            column("workers", BigInteger),
            column("jobs", JSON),
        )
    )


def prune(tables: QueueTables, *states: str) -> Executable:
    """Delete up to ``limit`` jobs in ``states`` finished more than ``age`` seconds ago, outside
    workflows (a workflow is pruned whole: :func:`pgq_sa._sql.workflows.prune_workflows`)."""
    jobs = tables.jobs
    oldest = (
        select(jobs.c.id)
        .where(
            in_states(jobs.c.state, *states),
            jobs.c.workflow_id.is_(None),
            jobs.c.finished_at < func.now() - bindparam("age", type_=Double) * one_second(),
        )
        .order_by(jobs.c.finished_at)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return jobs.delete().where(jobs.c.id.in_(oldest)).returning(jobs.c.id)


# --- cluster-wide limits -----------------------------------------------------------------------
