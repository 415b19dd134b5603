"""Workflows in SQL: the unblocking every finishing statement shares, and the workflow statements.

The unblocking (:func:`unblock_ctes`) is a list of CTEs any statement that ends jobs appends to
its own, fed with the rows it just ended. It runs in that statement's transaction, so it holds
under the same lease guard as the finish itself, and it costs jobs outside workflows one filter
over the statement's own rows (``workflow_id IS NOT NULL``): every later CTE then reads nothing.

How it stays race-free under READ COMMITTED:

* the dependents of the ended steps (and of the steps this statement cancels) are locked ``FOR
  UPDATE`` in id order, whatever their state, and read back at their latest committed version:
  two parents finishing at once on two workers serialise on their common child, the second
  statement sees the first one's decrement, and exactly one of them sees the counter reach 0;
* each dependent's ``waiting_for`` drops by the number of its dependencies this statement ended
  or cancelled, counted from the parents' side of the edges (a fan-in of 10,000 costs each
  parent's finish one edge, not 10,000);
* a step that ended ``failed`` or ``cancelled`` cancels its ``'cancel'`` dependents still
  waiting, transitively (a recursive CTE that walks only through them), with a
  ``pgq_sa.UpstreamFailed`` error naming the step that failed; ``'run'`` dependents are only
  counted down, and run with the failure in ``job.upstream``.

Every statement locks rows in the same order: the running rows it ends, then waiting rows in id
order (all in one pass, ``wf_locked``), so finishes, cancels, retries and the straggler sweep
cannot deadlock with one another; the UPDATE that follows writes rows already locked, in
whatever order its plan joins them (a primary-key lookup per row: a fan-out of 10,000 is 10,000
lookups, not 10,000 squared). Newly queued steps wake the workers with one NOTIFY per
statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Integer,
    Text,
    bindparam,
    column,
    text,
)
from sqlalchemy.sql.expression import BindParameter, ColumnClause, Executable, TextClause

from pgq_sa._schema import QueueTables, finished_channel, notify_channel
from pgq_sa._sql.shared import (
    ENQUEUE_COLUMNS,
    LIVE_PREDICATE,
    JsonColumn,
    announce_finished_sql,
    json_input,
    json_rows,
    new_jobs_source,
)

UPSTREAM_FAILED = "pgq_sa.UpstreamFailed"
FINISHED = "('succeeded', 'failed', 'cancelled')"

# The steps of a new workflow: the enqueue's columns, then the step's own (one JSON array each).
STEP_INPUT = json_input((*ENQUEUE_COLUMNS, "on_upstream_failure", "waiting_for"))
# Edges between new steps, by their 1-based position in the input.
EDGE_INPUT: tuple[JsonColumn, ...] = (
    ("edge_parents", "parent", "text"),
    ("edge_children", "child", "text"),
)
# Existing steps a step added at run time comes before: (position of the new step, job id).
BEFORE_INPUT: tuple[JsonColumn, ...] = (
    ("before_steps", "step", "text"),
    ("before_targets", "target", "text"),
)

_INSERT_STEPS = """
    INSERT INTO "{s}".jobs AS j (id, task, queue, payload, priority, max_attempts, run_at,
                                 dedupe_key, meta, workflow_id, state, waiting_for,
                                 on_upstream_failure, awaited)
    SELECT i.id, i.task, i.queue, i.payload, i.priority, i.max_attempts, i.run_at, i.dedupe_key,
           i.meta, {workflow_id},
           (CASE WHEN i.waiting_for::integer = 0 THEN 'queued' ELSE 'waiting' END
           )::"{s}".job_state,
           i.waiting_for::integer, i.on_upstream_failure, {awaited}
      FROM input AS i CROSS JOIN {workflow} AS w
     ORDER BY i.ord
    ON CONFLICT (dedupe_key) WHERE {live} DO NOTHING
    RETURNING j.id"""


# The edges between new steps (the CTE ``input`` of them, by position), as (parent, child) ids.
_NEW_EDGES = f"""SELECT p.id, c.id
      FROM {json_rows(EDGE_INPUT, "e")}
      JOIN input AS p ON p.ord = e.parent::bigint
      JOIN input AS c ON c.ord = e.child::bigint"""


def _step_source(s: str) -> str:
    return new_jobs_source(s, STEP_INPUT)


def _counts(*names: str) -> list[ColumnClause[int]]:
    """Result columns that are counts (or ids), for ``TextClause.columns``."""
    return [column(name, BigInteger) for name in names]


def _text_params(*groups: tuple[JsonColumn, ...]) -> list[BindParameter[str]]:
    return [bindparam(parameter, type_=Text) for group in groups for parameter, _, _ in group]


# --- the unblocking, shared by every statement that ends jobs ----------------------------------

UNBLOCK_NOTICES = "((SELECT count(*) FROM wf_woken) + (SELECT count(*) FROM wf_announced))"
"""SQL counting the NOTIFYs of the unblocking; a statement must read it (or ``wf_changed``) so
that the CTEs sending them run."""


def _edges_from(s: str, parent: str) -> str:
    """The edges leaving step ``parent`` (SQL, for a LATERAL subquery): a range of the primary
    key whatever the statistics, as ``OFFSET 0`` keeps the planner from flattening it into a
    hash join that would read every edge of every workflow."""
    return (
        f'SELECT d.job_id FROM "{s}".job_dependencies AS d WHERE d.depends_on = {parent} OFFSET 0'
    )


def _upstream_error(cause: str, step: str) -> str:
    """The stored error (SQL) of step ``step`` cancelled because of the step whose id, task and
    state are ``cause``'s ``cause``, ``cause_task`` and ``cause_state``."""
    c = cause
    return f"""json_build_object(
               'type', '{UPSTREAM_FAILED}',
               'message', 'upstream step ' || {c}.cause || ' (' || {c}.cause_task || ') '
                          || CASE WHEN {c}.cause_state = 'failed' THEN 'failed'
                                  ELSE 'was cancelled' END,
               'traceback', NULL, 'attempt', {step}.attempt, 'upstream', {c}.cause)::jsonb"""


def unblock_ctes(s: str, ended: str) -> str:
    """CTEs (to follow others in a ``WITH RECURSIVE`` list) that settle the dependents of the rows
    of ``ended``: a CTE or FROM item with ``id``, ``state``, ``task`` and ``workflow_id`` of the
    jobs the statement just ended (rows still ``queued`` or ``running`` are ignored).

    ``wf_changed`` returns the dependents written (id, state, task, queue, run_at, awaited, and
    ``workflow_id``); :data:`UNBLOCK_NOTICES` must be read by the statement.
    """
    channel, finished = notify_channel(s), finished_channel(s)
    return f"""
wf_ended AS (
    SELECT e.id, e.state::text AS state, e.task
      FROM {ended} AS e
     WHERE e.workflow_id IS NOT NULL AND e.state::text IN {FINISHED}
),
wf_reach (id) AS (
    SELECT d.job_id
      FROM wf_ended AS e
     CROSS JOIN LATERAL ({_edges_from(s, "e.id")}) AS d
      JOIN "{s}".jobs AS c ON c.id = d.job_id
     WHERE e.state <> 'succeeded' AND c.on_upstream_failure = 'cancel'
    UNION
    SELECT d.job_id
      FROM wf_reach AS x
     CROSS JOIN LATERAL ({_edges_from(s, "x.id")}) AS d
      JOIN "{s}".jobs AS c ON c.id = d.job_id
     WHERE c.on_upstream_failure = 'cancel'
),
wf_locked AS (
    SELECT c.id, c.state, c.on_upstream_failure
      FROM "{s}".jobs AS c
     WHERE c.id = any(ARRAY(
               SELECT d.job_id
                 FROM (SELECT id FROM wf_ended UNION SELECT id FROM wf_reach) AS p
                CROSS JOIN LATERAL ({_edges_from(s, "p.id")}) AS d))
     ORDER BY c.id
       FOR UPDATE
),
wf_live AS (
    SELECT l.id, l.on_upstream_failure FROM wf_locked AS l WHERE l.state = 'waiting'
),
wf_cancel (id, cause) AS (
    SELECT l.id, e.id
      FROM wf_ended AS e
     CROSS JOIN LATERAL ({_edges_from(s, "e.id")}) AS d
      JOIN wf_live AS l ON l.id = d.job_id
     WHERE e.state <> 'succeeded' AND l.on_upstream_failure = 'cancel'
    UNION
    SELECT l.id, x.cause
      FROM wf_cancel AS x
     CROSS JOIN LATERAL ({_edges_from(s, "x.id")}) AS d
      JOIN wf_live AS l ON l.id = d.job_id
     WHERE l.on_upstream_failure = 'cancel'
),
wf_counts AS (
    SELECT d.job_id AS id, count(*) AS n
      FROM (SELECT id FROM wf_ended UNION SELECT id FROM wf_cancel) AS p
     CROSS JOIN LATERAL ({_edges_from(s, "p.id")}) AS d
     GROUP BY d.job_id
),
wf_plan AS (
    SELECT l.id, coalesce(k.n, 0) AS n, x.cause, u.task AS cause_task, u.state AS cause_state
      FROM wf_live AS l
      LEFT JOIN wf_counts AS k ON k.id = l.id
      LEFT JOIN (SELECT id, min(cause) AS cause FROM wf_cancel GROUP BY id) AS x ON x.id = l.id
      LEFT JOIN wf_ended AS u ON u.id = x.cause
     WHERE k.n IS NOT NULL OR x.cause IS NOT NULL
),
wf_changed AS (
    UPDATE "{s}".jobs AS c
       SET state = (CASE WHEN p.cause IS NOT NULL THEN 'cancelled'
                         WHEN c.waiting_for <= p.n THEN 'queued'
                         ELSE 'waiting' END)::"{s}".job_state,
           waiting_for = greatest(c.waiting_for - p.n, 0),
           run_at = CASE WHEN p.cause IS NULL AND c.waiting_for <= p.n
                         THEN greatest(c.run_at, now()) ELSE c.run_at END,
           finished_at = CASE WHEN p.cause IS NOT NULL THEN now() END,
           error = CASE WHEN p.cause IS NULL THEN c.error ELSE {_upstream_error("p", "c")} END
      FROM wf_plan AS p
     WHERE c.id = p.id AND c.state = 'waiting'
    RETURNING c.id, c.state, c.task, c.queue, c.run_at, c.awaited, c.workflow_id
),
wf_woken AS (
    SELECT pg_notify('{channel}',
                     CASE WHEN octet_length(m.message) <= 7900 THEN m.message
                          ELSE json_build_object('reason', 'workflow', 'tasks', NULL,
                                                 'queues', NULL, 'run_at', m.run_at)::text END)
      FROM (SELECT json_build_object('reason', 'workflow', 'tasks', json_agg(DISTINCT task),
                                     'queues', json_agg(DISTINCT queue),
                                     'run_at', extract(epoch FROM min(run_at)))::text AS message,
                   extract(epoch FROM min(run_at)) AS run_at
              FROM wf_changed WHERE state = 'queued' HAVING count(*) > 0) AS m
),
wf_announced AS ({
        announce_finished_sql(
            finished,
            "(SELECT id, state, awaited FROM wf_changed WHERE state = 'cancelled') AS wf_cancelled",
        )
    }
)"""


# --- creating a workflow -----------------------------------------------------------------------


def enqueue_workflow(tables: QueueTables) -> Executable:
    """Insert a workflow, all its steps and all its edges in one statement.

    Steps without dependencies start ``queued`` (the insert trigger wakes the workers), the others
    ``waiting`` with ``waiting_for`` = their number of dependencies. Ids are drawn in input order,
    so a step's id is larger than the ids of the steps it waits for. A step whose dedupe key is
    held by an unfinished job is skipped by ``ON CONFLICT`` and its position comes back in
    ``skipped``: the caller rolls the statement back (a savepoint) and looks the holder up.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH wf AS (
    INSERT INTO "{s}".workflows (name) VALUES (:name) RETURNING id
),
input AS ({_step_source(s)}
),
inserted AS ({
                _INSERT_STEPS.format(
                    s=s, awaited="false", workflow="wf", workflow_id="w.id", live=LIVE_PREDICATE
                )
            }
),
edges AS (
    INSERT INTO "{s}".job_dependencies (depends_on, job_id)
    {_NEW_EDGES}
    RETURNING job_id
)
SELECT (SELECT id FROM wf) AS workflow_id,
       (SELECT json_agg(i.id ORDER BY i.ord) FROM input AS i) AS ids,
       (SELECT json_agg(i.ord ORDER BY i.ord) FROM input AS i
         WHERE i.dedupe_key IS NOT NULL AND i.id NOT IN (SELECT id FROM inserted)) AS skipped,
       (SELECT count(*) FROM edges) AS edges
"""
        )
        .bindparams(
            bindparam("name", type_=Text),
            *_text_params(STEP_INPUT, EDGE_INPUT),
        )
        .columns(
            column("workflow_id", BigInteger),
            column("ids", JSON),
            column("skipped", JSON),
            column("edges", BigInteger),
        )
    )


def savepoint(name: str) -> tuple[TextClause, TextClause, TextClause]:
    """SAVEPOINT, ROLLBACK TO and RELEASE of savepoint ``name``: an enqueue that met a held key
    undoes its own rows inside the caller's transaction, and leaves the rest of it alone."""
    return (
        text(f"SAVEPOINT {name}"),
        text(f"ROLLBACK TO SAVEPOINT {name}"),
        text(f"RELEASE SAVEPOINT {name}"),
    )


def key_holders(tables: QueueTables) -> Executable:
    """The unfinished jobs holding any of ``keys``, with their workflow (NULL: a plain job)."""
    s = tables.schema
    return (
        text(
            f"""
SELECT h.dedupe_key, h.id, h.workflow_id
  FROM "{s}".jobs AS h
 WHERE h.dedupe_key = any(:keys) AND h.dedupe_key IS NOT NULL
   AND h.state NOT IN {FINISHED}
"""
        )
        .bindparams(bindparam("keys", type_=ARRAY(Text)))
        .columns(
            column("dedupe_key", Text), column("id", BigInteger), column("workflow_id", BigInteger)
        )
    )


def add_steps(tables: QueueTables) -> Executable:
    """Add steps to the running step's workflow, in the transaction that will record its success.

    ``leased`` is 0 when the step no longer holds its lease (the caller rolls back), and nothing
    is added when its cancellation was requested. The steps named in ``before`` (``targets``)
    must be waiting steps of the same workflow: they wait for the new steps too
    (``waiting_for`` grows by one per edge). They and the adding step's own dependents are locked
    now, in id order, so the finish that follows in this transaction waits for no other lock.
    New steps inherit ``awaited`` from the adding step, so ``wait_workflow`` hears of them.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH me AS (
    SELECT j.id, j.workflow_id, j.awaited, j.cancel_requested
      FROM "{s}".jobs AS j
     WHERE j.id = :job_id AND j.attempt = :attempt AND j.state = 'running'
       AND j.worker_id = :worker_id AND j.workflow_id IS NOT NULL
       FOR UPDATE
),
before AS (
    SELECT b.step::bigint AS ord, b.target::bigint AS target
      FROM {json_rows(BEFORE_INPUT, "b")}
),
held AS (
    SELECT t.id, t.state, t.workflow_id
      FROM "{s}".jobs AS t
     WHERE t.id = any(ARRAY(SELECT target FROM before
                            UNION SELECT d.job_id FROM "{s}".job_dependencies AS d
                                   WHERE d.depends_on = (SELECT id FROM me)))
       AND EXISTS (SELECT 1 FROM me)
     ORDER BY t.id
       FOR UPDATE
),
targets AS (
    SELECT h.id FROM held AS h, me
     WHERE h.id IN (SELECT target FROM before) AND h.state = 'waiting'
       AND h.workflow_id = me.workflow_id
),
input AS ({_step_source(s)}
     WHERE EXISTS (SELECT 1 FROM me WHERE NOT me.cancel_requested)
       AND (SELECT count(*) FROM targets) = (SELECT count(DISTINCT target) FROM before)
),
inserted AS ({
                _INSERT_STEPS.format(
                    s=s,
                    awaited="w.awaited",
                    workflow="me",
                    workflow_id="w.workflow_id",
                    live=LIVE_PREDICATE,
                )
            }
),
edges AS (
    INSERT INTO "{s}".job_dependencies (depends_on, job_id)
    {_NEW_EDGES}
    UNION ALL
    SELECT p.id, b.target FROM before AS b JOIN input AS p ON p.ord = b.ord
    RETURNING job_id
),
bumped AS (
    UPDATE "{s}".jobs AS t
       SET waiting_for = t.waiting_for + k.n
      FROM (SELECT b.target, count(*) AS n FROM before AS b
             WHERE EXISTS (SELECT 1 FROM input) GROUP BY b.target) AS k
     WHERE t.id = any(ARRAY(SELECT id FROM targets)) AND t.id = k.target
    RETURNING t.id
)
SELECT (SELECT count(*) FROM me) AS leased,
       coalesce((SELECT bool_or(cancel_requested) FROM me), false) AS cancel_requested,
       (SELECT count(*) FROM targets) AS targets,
       (SELECT json_agg(i.id ORDER BY i.ord) FROM input AS i) AS ids,
       (SELECT count(*) FROM inserted) AS inserted,
       (SELECT count(*) FROM edges) AS edges,
       (SELECT count(*) FROM bumped) AS bumped
"""
        )
        .bindparams(
            bindparam("job_id", type_=BigInteger),
            bindparam("attempt", type_=Integer),
            bindparam("worker_id", type_=tables.jobs.c.worker_id.type),
            *_text_params(STEP_INPUT, EDGE_INPUT, BEFORE_INPUT),
        )
        .columns(
            column("leased", BigInteger),
            column("cancel_requested", Boolean),
            column("targets", BigInteger),
            column("ids", JSON),
            column("inserted", BigInteger),
            column("edges", BigInteger),
            column("bumped", BigInteger),
        )
    )


# --- reading -----------------------------------------------------------------------------------

_STEP_NAMES = (
    "id",
    "task",
    "queue",
    "state",
    "attempt",
    "max_attempts",
    "priority",
    "payload",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "run_at",
    "dedupe_key",
    "cancel_requested",
    "scheduled_at",
    "workflow_id",
    "on_upstream_failure",
    "waiting_for",
)


def _step_columns(s: str) -> str:
    """The columns of a step (``_STEP_NAMES`` of jobs row ``j``) and the ids it waits for."""
    return (
        ", ".join(f"j.{name}" for name in _STEP_NAMES)
        + f""",
       ARRAY(SELECT d.depends_on FROM "{s}".job_dependencies AS d
              WHERE d.job_id = j.id ORDER BY d.depends_on) AS waits_for"""
    )


def get_workflow(tables: QueueTables) -> Executable:
    """One workflow and its steps in id order (the order they were added); one row with NULL
    step columns for a workflow without steps, none for an unknown id."""
    s = tables.schema
    return (
        text(
            f"""
SELECT w.id AS workflow, w.name, w.created_at AS workflow_created_at,
       {_step_columns(s)}
  FROM "{s}".workflows AS w
  LEFT JOIN "{s}".jobs AS j ON j.workflow_id = w.id
 WHERE w.id = :workflow_id
 ORDER BY j.id
"""
        )
        .bindparams(bindparam("workflow_id", type_=BigInteger))
        .columns(
            column("workflow", BigInteger),
            column("name", Text),
            column("workflow_created_at", DateTime(timezone=True)),
            *(column(c.name, c.type) for c in _step_table_columns(tables)),
            column("waits_for", ARRAY(BigInteger)),
        )
    )


def _step_table_columns(tables: QueueTables) -> list[Column[Any]]:
    jobs = tables.jobs
    return [jobs.c[name] for name in _STEP_NAMES]


def unfinished_steps(tables: QueueTables) -> Executable:
    """The ids of a workflow's steps that have not finished (``wait_workflow`` watches them)."""
    s = tables.schema
    return (
        text(
            f"""
SELECT j.id FROM "{s}".jobs AS j
 WHERE j.workflow_id = :workflow_id AND j.state NOT IN {FINISHED}
"""
        )
        .bindparams(bindparam("workflow_id", type_=BigInteger))
        .columns(*_counts("id"))
    )


def mark_workflow_awaited(tables: QueueTables) -> Executable:
    """Flag every unfinished step ``awaited`` (its end is announced on the finished channel),
    and wake the workers for the queued ones (a claim may have skipped a row this locked)."""
    s = tables.schema
    channel = notify_channel(s)
    return (
        text(
            f"""
WITH flagged AS (
    UPDATE "{s}".jobs AS j SET awaited = true
     WHERE j.workflow_id = :workflow_id AND j.state NOT IN {FINISHED} AND NOT j.awaited
    RETURNING j.id, j.state, j.task
)
SELECT count(*) AS flagged,
       (SELECT pg_notify('{channel}', json_build_object('reason', 'awaited',
                                                        'tasks', json_agg(DISTINCT task))::text)
          FROM flagged WHERE state = 'queued' HAVING count(*) > 0) AS woken
  FROM flagged
"""
        )
        .bindparams(bindparam("workflow_id", type_=BigInteger))
        .columns(*_counts("flagged"))
    )


def list_workflows(tables: QueueTables) -> Executable:
    """The newest ``limit`` workflows (of ``status``, when given), with their step counts."""
    s = tables.schema
    return (
        text(
            f"""
SELECT * FROM (
    SELECT w.id, w.name, w.created_at, c.steps, c.waiting, c.queued, c.running, c.succeeded,
           c.failed, c.cancelled, c.finished_at,
           CASE WHEN c.waiting + c.queued + c.running > 0 THEN 'running'
                WHEN c.failed > 0 THEN 'failed'
                WHEN c.cancelled > 0 THEN 'cancelled'
                ELSE 'succeeded' END AS status
      FROM "{s}".workflows AS w
      CROSS JOIN LATERAL (
          SELECT count(*) AS steps,
                 count(*) FILTER (WHERE j.state = 'waiting') AS waiting,
                 count(*) FILTER (WHERE j.state = 'queued') AS queued,
                 count(*) FILTER (WHERE j.state = 'running') AS running,
                 count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
                 count(*) FILTER (WHERE j.state = 'failed') AS failed,
                 count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
                 max(j.finished_at) AS finished_at
            FROM "{s}".jobs AS j WHERE j.workflow_id = w.id
      ) AS c
     ORDER BY w.id DESC
) AS listed
 WHERE CAST(:status AS text) IS NULL OR listed.status = :status
 ORDER BY listed.id DESC
 LIMIT :limit
"""
        )
        .bindparams(bindparam("status", type_=Text), bindparam("limit", type_=Integer))
        .columns(
            column("id", BigInteger),
            column("name", Text),
            column("created_at", DateTime(timezone=True)),
            *(
                column(name, BigInteger)
                for name in (
                    "steps",
                    "waiting",
                    "queued",
                    "running",
                    "succeeded",
                    "failed",
                    "cancelled",
                )
            ),
            column("finished_at", DateTime(timezone=True)),
            column("status", Text),
        )
    )


# --- cancel and retry --------------------------------------------------------------------------


def _flag_running(s: str, workflow: str) -> str:
    """An UPDATE flagging the running steps of ``workflow`` (SQL for its id) for cancellation,
    telling their workers at commit. Rows a finishing statement holds are skipped (they end)."""
    channel = notify_channel(s)
    return f"""
    UPDATE "{s}".jobs AS j SET cancel_requested = true
     WHERE j.id = any(ARRAY(SELECT r.id FROM "{s}".jobs AS r
                             WHERE r.workflow_id = {workflow} AND r.state = 'running'
                               AND NOT r.cancel_requested
                             ORDER BY r.id FOR UPDATE SKIP LOCKED))
       AND j.state = 'running'
    RETURNING j.id, pg_notify('{channel}', json_build_object('reason', 'cancel', 'id', j.id)::text)
"""


def cancel_workflow(tables: QueueTables) -> Executable:
    """Cancel every step of a workflow that has not finished: waiting and queued ones at once,
    running ones flagged (their workers stop them; their end then finds nothing left to unblock).
    Every unfinished step is cancelled here, so the unblocking has nothing to do.

    Lock order: the workflow row, running steps (never waiting for one), then the others in id
    order, like every finishing statement. ``found`` is 0 for an unknown workflow.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH wf AS (
    SELECT w.id FROM "{s}".workflows AS w WHERE w.id = :workflow_id FOR UPDATE
),
flagged AS ({_flag_running(s, "(SELECT id FROM wf)")}),
ended AS (
    UPDATE "{s}".jobs AS j
       SET state = 'cancelled', finished_at = now(), cancel_requested = true
     WHERE j.id = any(ARRAY(SELECT r.id FROM "{s}".jobs AS r
                             WHERE r.workflow_id = (SELECT id FROM wf)
                               AND r.state IN ('waiting', 'queued')
                             ORDER BY r.id))
       AND j.state IN ('waiting', 'queued')
       AND (SELECT count(*) FROM flagged) >= 0
    RETURNING j.id, j.state, j.awaited
),
announced AS ({announce_finished_sql(finished_channel(s), "ended")}
)
SELECT (SELECT count(*) FROM wf) AS found, (SELECT count(*) FROM flagged) AS flagged,
       (SELECT count(*) FROM ended) AS cancelled, (SELECT count(*) FROM announced) AS announced
"""
        )
        .bindparams(bindparam("workflow_id", type_=BigInteger))
        .columns(*_counts("found", "flagged", "cancelled", "announced"))
    )


def flag_workflow_running(tables: QueueTables) -> Executable:
    """Flag the running steps of a workflow not flagged yet: run after :func:`cancel_workflow` in
    its transaction, for steps claimed between its snapshot and its locks."""
    s = tables.schema
    return (
        text(f"WITH flagged AS ({_flag_running(s, ':workflow_id')}) SELECT count(*) FROM flagged")
        .bindparams(bindparam("workflow_id", type_=BigInteger))
        .columns(*_counts("count"))
    )


def retry_plan(tables: QueueTables) -> Executable:
    """Lock a workflow's row (one retry or cancel of it at a time) and read what a retry decides
    from: each step's state, the type of its error, its dependencies, and whether another
    unfinished job holds its dedupe key. ``found`` is false for an unknown workflow."""
    s = tables.schema
    return (
        text(
            f"""
WITH wf AS (
    SELECT w.id FROM "{s}".workflows AS w WHERE w.id = :workflow_id FOR UPDATE
)
SELECT j.id, j.state::text AS state, j.error ->> 'type' AS error_type, j.dedupe_key,
       (SELECT h.id FROM "{s}".jobs AS h
         WHERE j.dedupe_key IS NOT NULL AND h.dedupe_key = j.dedupe_key AND h.id <> j.id
           AND h.state NOT IN {FINISHED} LIMIT 1) AS key_holder,
       ARRAY(SELECT d.depends_on FROM "{s}".job_dependencies AS d
              WHERE d.job_id = j.id ORDER BY d.depends_on) AS waits_for
  FROM wf JOIN "{s}".jobs AS j ON j.workflow_id = wf.id
 ORDER BY j.id
"""
        )
        .bindparams(bindparam("workflow_id", type_=BigInteger))
        .columns(
            column("id", BigInteger),
            column("state", Text),
            column("error_type", Text),
            column("dedupe_key", Text),
            column("key_holder", BigInteger),
            column("waits_for", ARRAY(BigInteger)),
        )
    )


def retry_steps(tables: QueueTables) -> Executable:
    """Run the steps ``ids`` (failed, or cancelled because of a failure) again.

    Each revived step waits for its dependencies that are revived too or not finished: it is
    ``queued`` when there are none, else ``waiting``. Dependents outside the set that have not
    started (waiting or queued) wait for the revived steps again. Dependencies outside the set
    are share-locked first (a running one cannot finish under this count), then every changed
    row is locked in id order, like every finishing statement.
    """
    s = tables.schema
    channel = notify_channel(s)
    return (
        text(
            f"""
WITH r AS (
    SELECT x.id::bigint AS id FROM json_array_elements_text(CAST(:ids AS json)) AS x(id)
),
outside AS (
    SELECT p.id, p.state
      FROM "{s}".jobs AS p
     WHERE p.id = any(ARRAY(SELECT d.depends_on FROM "{s}".job_dependencies AS d
                             WHERE d.job_id IN (SELECT id FROM r)
                            EXCEPT SELECT id FROM r))
     ORDER BY p.id
       FOR SHARE
),
counts AS (
    SELECT d.job_id AS id, count(*) AS n
      FROM "{s}".job_dependencies AS d
     WHERE d.job_id IN (SELECT id FROM r)
       AND (d.depends_on IN (SELECT id FROM r)
            OR d.depends_on IN (SELECT id FROM outside WHERE state NOT IN {FINISHED}))
     GROUP BY d.job_id
),
plan AS (
    SELECT r.id, true AS revive, coalesce(k.n, 0) AS n
      FROM r LEFT JOIN counts AS k ON k.id = r.id
    UNION ALL
    SELECT d.job_id, false, count(*)
      FROM "{s}".job_dependencies AS d
     WHERE d.depends_on IN (SELECT id FROM r) AND d.job_id NOT IN (SELECT id FROM r)
     GROUP BY d.job_id
),
locked AS (
    SELECT j.id FROM "{s}".jobs AS j
     WHERE j.id = any(ARRAY(SELECT id FROM plan)) AND (SELECT count(*) FROM outside) >= 0
     ORDER BY j.id
       FOR UPDATE
),
changed AS (
    UPDATE "{s}".jobs AS j
       SET state = (CASE WHEN p.revive AND p.n = 0 THEN 'queued' ELSE 'waiting' END
                   )::"{s}".job_state,
           waiting_for = CASE WHEN p.revive THEN p.n ELSE j.waiting_for + p.n END,
           run_at = CASE WHEN p.revive THEN now() ELSE j.run_at END,
           finished_at = NULL,
           started_at = CASE WHEN p.revive THEN NULL ELSE j.started_at END,
           worker_id = CASE WHEN p.revive THEN NULL ELSE j.worker_id END,
           cancel_requested = false,
           error = CASE WHEN p.revive AND j.error ->> 'type' = '{UPSTREAM_FAILED}' THEN NULL
                        ELSE j.error END,
           max_attempts = CASE WHEN p.revive THEN greatest(j.max_attempts, j.attempt + 1)
                               ELSE j.max_attempts END
      FROM plan AS p
     WHERE j.id = p.id AND j.id IN (SELECT id FROM locked)
       AND CASE WHEN p.revive THEN j.state IN ('failed', 'cancelled')
                ELSE j.state IN ('waiting', 'queued') END
    RETURNING j.id, j.state, j.task, p.revive
)
SELECT (SELECT count(*) FROM changed WHERE revive) AS revived,
       (SELECT count(*) FROM changed WHERE NOT revive) AS held_back,
       (SELECT pg_notify('{channel}', json_build_object('reason', 'retry',
                                                        'tasks', json_agg(DISTINCT task))::text)
          FROM changed WHERE state = 'queued' HAVING count(*) > 0) AS woken
"""
        )
        .bindparams(bindparam("ids", type_=Text))
        .columns(*_counts("revived", "held_back"))
    )


# --- maintenance -------------------------------------------------------------------------------


def settle_stragglers(tables: QueueTables) -> Executable:
    """Queue or cancel waiting steps whose dependencies have all finished, by the unblocking's
    rules: the safety net for counters a statement could not keep (a parent finished by a worker
    of a release without workflows, during a rolling upgrade).

    Bounded: it reads the next ``scan`` workflow steps after the cursor ``(after_workflow,
    after_id)`` in the order of their index and settles at most ``limit`` of them; ``cursor_*``
    is where the next call starts (NULL once the end is reached: start again from 0, 0). Rows
    another statement holds are skipped; the steps it cancels cascade like any others.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH RECURSIVE scanned AS (
    SELECT j.workflow_id, j.id, j.state
      FROM "{s}".jobs AS j
     WHERE j.workflow_id IS NOT NULL
       AND (j.workflow_id, j.id) > (CAST(:after_workflow AS bigint), CAST(:after_id AS bigint))
     ORDER BY j.workflow_id, j.id
     LIMIT :scan
),
stuck AS (
    SELECT x.id FROM scanned AS x
     WHERE x.state = 'waiting'
       AND NOT EXISTS (SELECT 1 FROM "{s}".job_dependencies AS d
                         JOIN "{s}".jobs AS p ON p.id = d.depends_on
                        WHERE d.job_id = x.id AND p.state NOT IN {FINISHED})
     ORDER BY x.id
     LIMIT :limit
),
picked AS (
    SELECT j.id, j.on_upstream_failure
      FROM "{s}".jobs AS j
     WHERE j.id = any(ARRAY(SELECT id FROM stuck)) AND j.state = 'waiting'
     ORDER BY j.id
       FOR UPDATE SKIP LOCKED
),
verdict AS (
    SELECT k.id, k.on_upstream_failure = 'cancel' AND u.id IS NOT NULL AS cancel,
           u.id AS cause, u.task AS cause_task, u.state::text AS cause_state
      FROM picked AS k
      LEFT JOIN LATERAL (
          SELECT p.id, p.task, p.state FROM "{s}".job_dependencies AS d
            JOIN "{s}".jobs AS p ON p.id = d.depends_on
           WHERE d.job_id = k.id AND p.state IN ('failed', 'cancelled')
           ORDER BY p.id LIMIT 1
      ) AS u ON true
),
settled AS (
    UPDATE "{s}".jobs AS c
       SET state = (CASE WHEN v.cancel THEN 'cancelled' ELSE 'queued' END)::"{s}".job_state,
           waiting_for = 0,
           run_at = CASE WHEN v.cancel THEN c.run_at ELSE greatest(c.run_at, now()) END,
           finished_at = CASE WHEN v.cancel THEN now() END,
           error = CASE WHEN NOT v.cancel THEN c.error ELSE {_upstream_error("v", "c")} END
      FROM verdict AS v
     WHERE c.id = v.id AND c.state = 'waiting'
    RETURNING c.id, c.state, c.task, c.queue, c.run_at, c.awaited, c.workflow_id
),
settled_woken AS (
    SELECT pg_notify('{notify_channel(s)}',
                     json_build_object('reason', 'workflow',
                                       'tasks', json_agg(DISTINCT task))::text)
      FROM settled WHERE state = 'queued' HAVING count(*) > 0
),
settled_announced AS ({announce_finished_sql(finished_channel(s), "settled")}
),
{unblock_ctes(s, "settled")}
SELECT (SELECT count(*) FROM settled WHERE state = 'queued') AS queued,
       (SELECT count(*) FROM settled WHERE state = 'cancelled') AS cancelled,
       (SELECT count(*) FROM wf_changed WHERE state = 'cancelled') AS cascaded,
       (SELECT count(*) FROM settled_woken) + (SELECT count(*) FROM settled_announced)
       + {UNBLOCK_NOTICES} AS notices,
       (SELECT count(*) FROM scanned) AS scanned,
       (SELECT x.workflow_id FROM scanned AS x ORDER BY x.workflow_id DESC, x.id DESC LIMIT 1)
           AS cursor_workflow,
       (SELECT x.id FROM scanned AS x ORDER BY x.workflow_id DESC, x.id DESC LIMIT 1)
           AS cursor_id
"""
        )
        .bindparams(
            bindparam("after_workflow", type_=BigInteger),
            bindparam("after_id", type_=BigInteger),
            bindparam("scan", type_=Integer),
            bindparam("limit", type_=Integer),
        )
        .columns(
            *_counts(
                "queued",
                "cancelled",
                "cascaded",
                "notices",
                "scanned",
                "cursor_workflow",
                "cursor_id",
            )
        )
    )


def prune_workflows(tables: QueueTables) -> Executable:
    """Delete up to ``limit`` finished workflows whole (steps, edges, the workflow row), oldest
    first: those whose every step finished, the last one more than ``succeeded_age`` seconds ago
    (``failed_age`` when a step failed or was cancelled). A workflow with a step not finished is
    kept whole, so no step another step still needs is ever deleted."""
    s = tables.schema
    return (
        text(
            f"""
WITH done AS (
    SELECT w.id
      FROM "{s}".workflows AS w
     WHERE NOT EXISTS (SELECT 1 FROM "{s}".jobs AS j
                        WHERE j.workflow_id = w.id AND j.state NOT IN {FINISHED})
       AND coalesce((SELECT max(j.finished_at) FROM "{s}".jobs AS j WHERE j.workflow_id = w.id),
                    w.created_at)
           < now() - (CASE WHEN EXISTS (SELECT 1 FROM "{s}".jobs AS j
                                         WHERE j.workflow_id = w.id
                                           AND j.state IN ('failed', 'cancelled'))
                           THEN :failed_age ELSE :succeeded_age END) * interval '1 second'
     ORDER BY w.id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
),
steps AS (
    DELETE FROM "{s}".jobs AS j
     WHERE j.workflow_id IN (SELECT id FROM done)
    RETURNING j.id
),
edges AS (
    DELETE FROM "{s}".job_dependencies AS d
     WHERE d.job_id IN (SELECT id FROM steps)
    RETURNING d.job_id
),
gone AS (
    DELETE FROM "{s}".workflows AS w WHERE w.id IN (SELECT id FROM done) RETURNING w.id
)
SELECT (SELECT count(*) FROM gone) AS workflows, (SELECT count(*) FROM steps) AS steps,
       (SELECT count(*) FROM edges) AS edges
"""
        )
        .bindparams(
            bindparam("succeeded_age", type_=Double),
            bindparam("failed_age", type_=Double),
            bindparam("limit", type_=Integer),
        )
        .columns(*_counts("workflows", "steps", "edges"))
    )


def step_context(tables: QueueTables) -> Executable:
    """What the workflow steps a claim leased (``:ids``) learn beside their row: ``job.upstream``,
    each direct dependency with the columns of a ``JobInfo`` but the payload (a fan-in of
    10,000 would carry 10,000 payloads), times as epoch seconds; and ``job.dependents``, the
    ids of the steps that wait for them.

    A second statement, sent only after a claim that leased steps: in the claim itself, even
    unused, these subqueries cost every claim of plain jobs their setup. Their parents are
    finished (a step is claimed only then) and their dependents are added only by the step
    itself, so reading them after the claim committed reads what the claim would have."""
    s = tables.schema
    return (
        text(
            f"""
SELECT c.id,
       (SELECT json_agg(json_build_object(
                   'id', p.id, 'task', p.task, 'queue', p.queue, 'state', p.state,
                   'attempt', p.attempt, 'max_attempts', p.max_attempts,
                   'priority', p.priority, 'result', p.result, 'error', p.error,
                   'created_at', extract(epoch FROM p.created_at),
                   'started_at', extract(epoch FROM p.started_at),
                   'finished_at', extract(epoch FROM p.finished_at),
                   'run_at', extract(epoch FROM p.run_at),
                   'dedupe_key', p.dedupe_key, 'workflow_id', p.workflow_id) ORDER BY p.id)
          FROM "{s}".job_dependencies AS d JOIN "{s}".jobs AS p ON p.id = d.depends_on
         WHERE d.job_id = c.id) AS upstream,
       ARRAY(SELECT d.job_id FROM "{s}".job_dependencies AS d WHERE d.depends_on = c.id
              ORDER BY d.job_id) AS dependents
  FROM unnest(CAST(:ids AS bigint[])) AS c(id)
"""
        )
        .bindparams(bindparam("ids", type_=ARRAY(BigInteger)))
        .columns(
            column("id", BigInteger),
            column("upstream", JSON),
            column("dependents", ARRAY(BigInteger)),
        )
    )


@dataclass(frozen=True)
class WorkflowStatements:
    """The statements of workflows (the unblocking itself lives in the finishing statements)."""

    enqueue: Executable
    savepoint: Executable
    rollback_to_savepoint: Executable
    release_savepoint: Executable
    key_holders: Executable
    add_steps: Executable
    get: Executable
    unfinished_steps: Executable
    mark_awaited: Executable
    list: Executable
    cancel: Executable
    flag_running: Executable
    retry_plan: Executable
    retry_steps: Executable
    settle_stragglers: Executable
    prune: Executable
    step_context: Executable

    @classmethod
    def build(cls, tables: QueueTables) -> WorkflowStatements:
        begin, rollback, release = savepoint("pgq_sa_enqueue_workflow")
        return cls(
            enqueue=enqueue_workflow(tables),
            savepoint=begin,
            rollback_to_savepoint=rollback,
            release_savepoint=release,
            key_holders=key_holders(tables),
            add_steps=add_steps(tables),
            get=get_workflow(tables),
            unfinished_steps=unfinished_steps(tables),
            mark_awaited=mark_workflow_awaited(tables),
            list=list_workflows(tables),
            cancel=cancel_workflow(tables),
            flag_running=flag_workflow_running(tables),
            retry_plan=retry_plan(tables),
            retry_steps=retry_steps(tables),
            settle_stragglers=settle_stragglers(tables),
            prune=prune_workflows(tables),
            step_context=step_context(tables),
        )
