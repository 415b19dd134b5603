"""Writing the outcomes of attempts under their leases, alone or together with the next claim."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    Text,
    bindparam,
    column,
    text,
)
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables, finished_channel
from pgq_sa._sql.claim import claimable, claimer, lease, order
from pgq_sa._sql.claim import parameters as claim_parameters
from pgq_sa._sql.shared import (
    CLAIMED_COLUMNS,
    JsonColumn,
    announce_finished_sql,
    claimed_types,
    json_rows,
)
from pgq_sa._sql.workflows import UNBLOCK_NOTICES, unblock_ctes

_FINISH_CTES = """
v AS (
    SELECT t.id::bigint AS id, t.attempt::integer AS attempt, t.outcome,
           t.delay::double precision AS delay,
           nullif(t.result, 'null'::jsonb) AS result, nullif(t.error, 'null'::jsonb) AS error
      FROM {outcome_rows}
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
    RETURNING j.id, j.state, j.run_at, j.awaited, j.task, j.workflow_id
),
notified AS ({announce_done}
),{unblock}"""


def finish_ctes(s: str, *, workflows: bool = True) -> str:
    """``_FINISH_CTES`` for schema ``s``, with the unblocking of workflow steps (they follow a
    ``WITH RECURSIVE``) unless the outcomes are known to be of jobs outside any workflow."""
    return _FINISH_CTES.format(
        s=s,
        outcome_rows=json_rows(OUTCOME_COLUMNS),
        announce_done=announce_finished_sql(finished_channel(s), "done"),
        unblock=unblock_ctes(s, "done") if workflows else "",
    ).rstrip(",")


def _notices(workflows: bool) -> str:
    """The NOTIFYs a finish sent, counted (reading them makes their CTEs run)."""
    return "(SELECT count(*) FROM notified)" + (f" + {UNBLOCK_NOTICES}" if workflows else "")


# The outcomes input: (parameter, column, kind), one JSON array each (``finish_parameters``).
OUTCOME_COLUMNS: tuple[JsonColumn, ...] = (
    ("ids", "id", "text"),
    ("attempts", "attempt", "text"),
    ("outcomes", "outcome", "text"),
    ("delays", "delay", "text"),
    ("results", "result", "jsonb"),
    ("errors", "error", "jsonb"),
)
_FINISH_PARAMETERS = tuple(parameter for parameter, _, _ in OUTCOME_COLUMNS)


def finish(tables: QueueTables, *, workflows: bool = True) -> Executable:
    """Record many outcomes at once: succeeded, failed, or queued again for a retry.

    Every row is guarded by its lease (job id + this worker + the attempt it claimed, still
    running): an outcome whose lease was lost matches nothing and is left out of the result. A
    retry of a job whose cancellation was requested ends ``cancelled`` instead. Finished ids are
    announced with one NOTIFY so ``Queue.wait`` wakes. ``workflows``: settle the workflow
    dependents of the jobs ended; without it (outcomes known to be of jobs outside any workflow)
    the statement is half the size and a third cheaper to run.
    """
    s = tables.schema
    ctes = finish_ctes(s, workflows=workflows)
    return (
        text(
            f"""
WITH RECURSIVE {ctes}
SELECT done.id, done.state::text AS state, done.run_at, {_notices(workflows)} AS notices
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


def finish_and_claim(tables: QueueTables, *, in_queues: bool, workflows: bool = True) -> Executable:
    """``finish`` and ``claim`` in one statement: one round trip and one commit per batch.

    The outcomes are written exactly as ``finish`` writes them (same leases, same NOTIFY) and the
    next jobs are leased exactly as ``claim`` leases them. Every part of one statement sees the
    same snapshot, so a job this statement queues again for a retry is not claimed by it (it was
    still running in the snapshot); the two parts touch disjoint rows. Rows come back tagged:
    ``claimed`` true for a leased job (the claim's columns), and one last row with ``claimed``
    false that sums up the outcomes written (``written_ids`` and ``written_states``, or NULL when
    none were; the earliest ``next_run_at`` of a retry; ``notices``): one row, not one per
    outcome, for the driver to decode.

    ``picked`` reads the statement's last write (an always-true count, evaluated once before its
    scan): ``wf_changed``, the unblocking of the workflow dependents (which may wait for row
    locks), or ``done`` when there is none, so the writes happen before any queued row is
    locked. ``FOR UPDATE`` in READ COMMITTED may keep a lock on a row it then skips (claimed
    meanwhile by another statement, so possibly a row whose outcome another statement is
    writing); a statement that could wait in ``done`` or in the unblocking while holding such
    locks could deadlock with another doing the same (seen once in a million jobs before this
    ordering). With the writes first, a statement waits only while it
    holds no claim locks, and the claim part never waits (SKIP LOCKED, its own rows).
    """
    s = tables.schema
    ctes = finish_ctes(s, workflows=workflows)
    last_write = "wf_changed" if workflows else "done"
    statement = text(
        f"""
WITH RECURSIVE {ctes},
{claimer(s)},
picked AS (
    SELECT j.id
      FROM "{s}".jobs AS j
     WHERE {claimable(s, "j", in_queues=in_queues)}
       AND (SELECT count(*) FROM {last_write}) >= 0
     ORDER BY {order("j")}
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    {lease(s, "picked")}
)
SELECT true AS claimed, {", ".join(CLAIMED_COLUMNS)},
       NULL::bigint[] AS written_ids, NULL::text[] AS written_states,
       NULL::timestamptz AS next_run_at, NULL::bigint AS notices, NULL::boolean AS alive
  FROM claimed
UNION ALL
SELECT false, {", ".join(["NULL"] * len(CLAIMED_COLUMNS))},
       array_agg(done.id), array_agg(done.state::text),
       min(done.run_at) FILTER (WHERE done.state = 'queued'),
       {_notices(workflows)},
       EXISTS (SELECT 1 FROM me)
  FROM done
"""
    )
    return statement.bindparams(
        *claim_parameters(tables, in_queues=in_queues),
        *(bindparam(name, type_=Text) for name in _FINISH_PARAMETERS),
    ).columns(
        column("claimed", Boolean),
        *claimed_types(tables),
        column("written_ids", ARRAY(BigInteger)),
        column("written_states", ARRAY(Text)),
        column("next_run_at", DateTime(timezone=True)),
        column("notices", BigInteger),
        column("alive", Boolean),
    )
