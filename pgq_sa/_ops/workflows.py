"""Workflow operations, written once as generators for the sync and async executors.

Enqueue (one statement; three more around a savepoint when dedupe keys are held), read, wait's
bookkeeping, cancel, retry, the steps a running step adds (committed with its success, under its
lease), and the maintenance pieces: the straggler sweep and the pruning of finished workflows.
Inputs arrive validated; each function holds the decisions and no I/O.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgq_sa._decisions import Outcome
from pgq_sa._errors import DedupeConflict
from pgq_sa._events import EventHub
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import Operation
from pgq_sa._ops.producer import NewJob, job_info, json_columns
from pgq_sa._schema import JobStatus
from pgq_sa._sql import Statements
from pgq_sa._sql.workflows import UPSTREAM_FAILED
from pgq_sa._workflow import WorkflowInfo, workflow_status

log = logging.getLogger("pgq_sa.workflows")

_DEDUPE_ROUNDS = 8


@dataclass(frozen=True)
class NewStep:
    """One validated step: its job, the positions (0-based) of the new steps it waits for, its
    upstream policy, and (steps added at run time) the existing steps it comes before."""

    job: NewJob
    after: tuple[int, ...]
    on_upstream_failure: str
    before: tuple[int, ...] = ()


def _step_parameters(steps: Sequence[NewStep]) -> dict[str, str]:
    """The step and edge inputs of ``enqueue_workflow`` and ``add_steps``: JSON arrays."""
    parents = [parent + 1 for step in steps for parent in step.after]
    children = [index + 1 for index, step in enumerate(steps) for _ in step.after]
    return {
        **json_columns([step.job for step in steps]),
        "on_upstream_failure": json.dumps([step.on_upstream_failure for step in steps]),
        "waiting_for": json.dumps([len(step.after) for step in steps]),
        "edge_parents": json.dumps(parents),
        "edge_children": json.dumps(children),
    }


def enqueue_workflow(
    statements: Statements,
    name: str | None,
    steps: Sequence[NewStep],
    events: EventHub | None = None,
) -> Operation[int]:
    """Insert the workflow, its steps and its edges in one statement; return its id.

    When a step's dedupe key is held by an unfinished job, nothing is inserted: the statement
    ran inside a savepoint, rolled back (the caller's own work stays). If the holder is a step
    of a workflow, that workflow's id is returned (the first such key, in the order of the
    steps); if it is a plain job, :class:`~pgq_sa.DedupeConflict` is raised. A holder that
    finished in between lets the insert try again, a bounded number of times.
    """
    queries = statements.workflows
    params = {"name": name, **_step_parameters(steps)}
    keys = sorted({step.job.dedupe_key for step in steps if step.job.dedupe_key is not None})
    if not keys:
        (row,) = yield queries.enqueue, params
        _announce(events, steps, row)
        return int(row.workflow_id)
    for _ in range(_DEDUPE_ROUNDS):
        yield queries.savepoint, None
        (row,) = yield queries.enqueue, params
        if not row.skipped:
            yield queries.release_savepoint, None
            _announce(events, steps, row)
            return int(row.workflow_id)
        yield queries.rollback_to_savepoint, None
        yield queries.release_savepoint, None
        holders = yield queries.key_holders, {"keys": keys}
        holder_of = {holder.dedupe_key: holder for holder in holders}
        for position in row.skipped:
            step = steps[position - 1]
            holder = holder_of.get(step.job.dedupe_key)
            if holder is None:
                continue  # finished meanwhile
            if holder.workflow_id is None:
                raise DedupeConflict(
                    f"step {position - 1} ({step.job.task!r}): dedupe_key "
                    f"{step.job.dedupe_key!r} is held by job {holder.id}, which is not a "
                    "workflow step; nothing was enqueued",
                    key=str(step.job.dedupe_key),
                    holder=int(holder.id),
                )
            return int(holder.workflow_id)
    raise RuntimeError("could not settle the dedupe keys of the workflow's steps; try again")


def _announce(events: EventHub | None, steps: Sequence[NewStep], row: Any) -> None:
    if events is not None and events.active:
        created = zip(row.ids, steps, strict=True)
        events.enqueued(
            [(job_id, step.job.task, step.job.queue) for job_id, step in created],
            workflow_id=int(row.workflow_id),
        )


# --- reading -----------------------------------------------------------------------------------


def get_workflow(statements: Statements, workflow_id: int) -> Operation[WorkflowInfo | None]:
    rows = yield statements.workflows.get, {"workflow_id": workflow_id}
    if not rows:
        return None
    first = rows[0]
    steps = [job_info(row) for row in rows if row.id is not None]
    return WorkflowInfo(
        id=int(first.workflow),
        name=first.name,
        status=workflow_status(step.status for step in steps),
        created_at=first.workflow_created_at,
        steps=steps,
        dependencies={row.id: tuple(row.waits_for or ()) for row in rows if row.id is not None},
    )


def unfinished_steps(statements: Statements, workflow_id: int) -> Operation[set[int]]:
    rows = yield statements.workflows.unfinished_steps, {"workflow_id": workflow_id}
    return {int(row.id) for row in rows}


def mark_awaited(statements: Statements, workflow_id: int) -> Operation[None]:
    """Ask for the end of every unfinished step to be announced (``wait_workflow``)."""
    yield statements.workflows.mark_awaited, {"workflow_id": workflow_id}


@dataclass(frozen=True)
class WorkflowSummary:
    """One line of ``pgq-sa workflows list``."""

    id: int
    name: str | None
    status: str
    created_at: datetime
    finished_at: datetime | None
    steps: int
    counts: dict[str, int]  # steps per state


def list_workflows(
    statements: Statements, status: str | None, limit: int
) -> Operation[list[WorkflowSummary]]:
    rows = yield statements.workflows.list, {"status": status, "limit": limit}
    return [
        WorkflowSummary(
            id=r.id,
            name=r.name,
            status=r.status,
            created_at=r.created_at,
            finished_at=r.finished_at if r.status != "running" else None,
            steps=r.steps,
            counts={state.value: int(getattr(r, state.value)) for state in JobStatus},
        )
        for r in rows
    ]


# --- cancel and retry --------------------------------------------------------------------------


def cancel_workflow(statements: Statements, workflow_id: int) -> Operation[int]:
    """Cancel every unfinished step; return how many were cancelled or asked to stop (0 for an
    unknown or finished workflow)."""
    queries = statements.workflows
    (row,) = yield queries.cancel, {"workflow_id": workflow_id}
    if not row.found:
        return 0
    (late,) = yield queries.flag_running, {"workflow_id": workflow_id}
    return int(row.flagged) + int(row.cancelled) + int(late[0])


def retry_workflow(statements: Statements, workflow_id: int) -> Operation[int]:
    """Run the failed steps again, and the steps cancelled because of them; return how many
    steps were revived (0: nothing to retry, or no such workflow). Succeeded steps are kept."""
    queries = statements.workflows
    rows = yield queries.retry_plan, {"workflow_id": workflow_id}
    revive = _revived(rows)
    if not revive:
        return 0
    for row in rows:
        if row.id in revive and row.key_holder is not None:
            raise DedupeConflict(
                f"step {row.id}: its dedupe_key {row.dedupe_key!r} is held by job "
                f"{row.key_holder}; finish or cancel that job first. Nothing was retried",
                key=str(row.dedupe_key),
                holder=int(row.key_holder),
            )
    (result,) = yield queries.retry_steps, {"ids": json.dumps(sorted(revive))}
    return int(result.revived)


def _revived(rows: Sequence[Any]) -> set[int]:
    """The steps a retry revives: every failed step, then (to a fixpoint) every step cancelled
    by the cascade none of whose dependencies stays cancelled."""
    state = {row.id: row.state for row in rows}
    revive = {row.id for row in rows if row.state == "failed"}
    cascaded = [
        row for row in rows if row.state == "cancelled" and row.error_type == UPSTREAM_FAILED
    ]
    changed = bool(revive)
    while changed:
        changed = False
        for row in cascaded:
            if row.id in revive:
                continue
            parents = row.waits_for or ()
            if all(state.get(p) != "cancelled" or p in revive for p in parents):
                revive.add(row.id)
                changed = True
    return revive


# --- steps added at run time -------------------------------------------------------------------


def finish_with_steps(
    statements: Statements,
    worker_id: uuid.UUID,
    job_id: int,
    outcome: Outcome,
    steps: Sequence[NewStep],
) -> Operation[protocol.Finished]:
    """Add ``steps`` to the running step's workflow, then write its (successful) ``outcome``
    with the lease-guarded finish: run it in one transaction, and roll that back when the
    result reports the lease lost. Raises ``ValueError`` (roll back too) when a ``before``
    target is not a waiting step of the workflow."""
    before = {target for step in steps for target in step.before}
    params: dict[str, Any] = {
        "job_id": job_id,
        "attempt": outcome.attempt,
        "worker_id": worker_id,
        **_step_parameters(steps),
        "before_steps": json.dumps([i + 1 for i, step in enumerate(steps) for _ in step.before]),
        "before_targets": json.dumps([t for step in steps for t in step.before]),
    }
    (row,) = yield statements.workflows.add_steps, params
    if not row.leased:
        return protocol.lost_lease([outcome])
    if not row.cancel_requested and row.targets != len(before):
        raise ValueError(
            f"job {job_id}: add_to_workflow(before={sorted(before)}): only waiting steps of the "
            "same workflow can wait for a new step (a step that started or finished cannot)"
        )
    finished = yield from protocol.finish(statements, worker_id, [outcome])
    return finished


# --- maintenance -------------------------------------------------------------------------------

SETTLE_SCAN = 10_000
SETTLE_LIMIT = 1_000


@dataclass(frozen=True)
class Settled:
    """What one straggler sweep did, and where the next one starts."""

    queued: int
    cancelled: int
    scanned: int
    cursor: tuple[int, int]  # (0, 0): the sweep reached the end and starts again


def settle_stragglers(
    statements: Statements,
    cursor: tuple[int, int] = (0, 0),
    scan: int = SETTLE_SCAN,
    limit: int = SETTLE_LIMIT,
) -> Operation[Settled]:
    """Queue (or cancel, by their policy) waiting steps whose dependencies have all finished,
    reading at most ``scan`` workflow steps after ``cursor``: the maintenance loop calls it with
    the cursor of the previous call, so every step is looked at in turn."""
    params = {"after_workflow": cursor[0], "after_id": cursor[1], "scan": scan, "limit": limit}
    (row,) = yield statements.workflows.settle_stragglers, params
    settled = Settled(
        queued=int(row.queued),
        cancelled=int(row.cancelled) + int(row.cascaded),
        scanned=int(row.scanned),
        cursor=(int(row.cursor_workflow), int(row.cursor_id))
        if row.scanned >= scan and row.cursor_id is not None
        else (0, 0),
    )
    if settled.queued or settled.cancelled:
        log.warning(
            "settled workflow steps left waiting after their dependencies finished (a worker "
            "of a previous release?): %d queued, %d cancelled",
            settled.queued,
            settled.cancelled,
        )
    return settled
