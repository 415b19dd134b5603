"""The worker's conversation with the database, written once for both workers.

Each function is an operation generator (see :mod:`pgq_sa._ops.drive`): it yields one statement of
:mod:`pgq_sa._sql` and turns the rows into plain values. The thread worker drives them with
``run_sync``, the async worker with ``run_async``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from pgq_sa._decisions import Outcome, finish_parameters
from pgq_sa._events import EventHub, rescued
from pgq_sa._job import Job, JobError, JobInfo
from pgq_sa._ops.drive import Operation
from pgq_sa._schema import JobStatus
from pgq_sa._sql import Statements
from pgq_sa._sql.shared import CLAIMED_COLUMNS, FinishedRow, FinishSummaryRow
from pgq_sa._tasks import TaskDefinition

log = logging.getLogger("pgq_sa.worker")


@dataclass(frozen=True)
class Identity:
    """Who a worker is, as recorded in the workers table."""

    id: uuid.UUID
    name: str
    kind: str
    hostname: str
    pid: int

    @classmethod
    def new(cls, kind: str, name: str | None = None) -> Identity:
        worker_id = uuid.uuid4()
        hostname = socket.gethostname()
        pid = os.getpid()
        return cls(worker_id, name or f"{hostname}:{pid}:{kind}", kind, hostname, pid)

    def next(self) -> Identity:
        """The same worker under a new id: after it was declared dead, it registers again as a
        new incarnation, so nothing it held under the old id can be mistaken for its own."""
        return dataclasses.replace(self, id=uuid.uuid4())


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learned: whether the worker's row still exists, and jobs to stop."""

    alive: bool
    cancel: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """What the finish statement recorded, and which outcomes lost their lease."""

    recorded: dict[int, str]
    lost: tuple[Outcome, ...]
    next_run_at: datetime | None


def register(
    statements: Statements,
    identity: Identity,
    tasks: Sequence[str],
    queues: Sequence[str] | None,
    concurrency: int,
    heartbeat_interval: float,
    lease_timeout: float,
) -> Operation[bool]:
    """Insert (or refresh) the worker's row, with its own heartbeat interval and lease."""
    yield (
        statements.register_worker,
        {
            "worker_id": identity.id,
            "name": identity.name,
            "kind": identity.kind,
            "hostname": identity.hostname,
            "pid": identity.pid,
            "queues": list(queues) if queues is not None else None,
            "tasks": list(tasks),
            "concurrency": concurrency,
            "heartbeat_interval": heartbeat_interval,
            "lease_timeout": lease_timeout,
        },
    )
    return True


def deregister(statements: Statements, worker_id: uuid.UUID) -> Operation[None]:
    yield statements.deregister_worker, {"worker_id": worker_id}


def heartbeat(statements: Statements, worker_id: uuid.UUID) -> Operation[Heartbeat]:
    """Refresh the worker's row; learn which of its running jobs to cancel. It runs on the
    heartbeat lane, on asyncpg as a prepared statement (driver_path): rows read by position."""
    rows: Sequence[Any] = yield statements.heartbeat, {"worker_id": worker_id}
    alive, cancel = rows[0][0], rows[0][1]
    return Heartbeat(alive=bool(alive), cancel=tuple(cancel or ()))


class Claimed(NamedTuple):
    """A leased job with what the worker needs beside the handler's view of it."""

    job: Job
    timeout: float | None
    cancel_requested: bool


class Claims(NamedTuple):
    """What a claim leased, and whether the claimer's row was alive (a claimer declared dead
    leases nothing until it registers again)."""

    jobs: list[Claimed]
    alive: bool = True


def claim(
    statements: Statements,
    worker_id: uuid.UUID,
    tasks: Sequence[str],
    queues: Sequence[str] | None,
    limit: int,
) -> Operation[Claims]:
    """Lease up to ``limit`` jobs; they come back as handler-ready ``Job`` objects."""
    params: dict[str, Any] = {"worker_id": worker_id, "tasks": list(tasks), "limit": limit}
    if queues is None:
        rows = yield statements.claim, params
    else:
        rows = yield statements.claim_in_queues, {**params, "queues": list(queues)}
    claims = _claims(rows)
    yield from _step_context(statements, claims.jobs)
    return claims


def claim_limited(
    statements: Statements,
    worker_id: uuid.UUID,
    tasks: Sequence[str],
    queues: Sequence[str] | None,
    limit: int,
) -> Operation[Claims]:
    """Claim jobs of tasks with cluster-wide limits; must run inside one transaction."""
    yield statements.lock_limits, {"tasks": list(tasks)}
    params: dict[str, Any] = {"worker_id": worker_id, "tasks": list(tasks), "limit": limit}
    if queues is None:
        rows = yield statements.claim_limited, params
    else:
        rows = yield statements.claim_limited_in_queues, {**params, "queues": list(queues)}
    claims = _claims([row[:_CLAIMED] for row in rows])  # then "paced"
    yield from _step_context(statements, claims.jobs)
    return claims


_CLAIMED = len(CLAIMED_COLUMNS)


def _claims(rows: Sequence[Any]) -> Claims:
    """The claimed rows, or the one row of NULLs a claimer without a live row gets."""
    if len(rows) == 1 and rows[0][0] is None:
        return Claims([], alive=False)
    return Claims(_claimed(rows))


def _claimed(rows: Sequence[Any]) -> list[Claimed]:
    """Handler-ready jobs from claimed rows, in the ``ClaimedRow`` shape: unpacked in its field
    order, once, here (a batch of a hundred rows arrives per claim; building a ``ClaimedRow`` of
    each and reading its attributes costs twice as much as the unpacking)."""
    claimed = []
    for (
        job_id,
        task,
        payload,
        attempt,
        max_attempts,
        priority,
        queue,
        created_at,
        timeout,
        scheduled_at,
        cancel_requested,
        run_at,
        started_at,
        meta,
        workflow_id,
    ) in rows:
        job = Job(
            job_id,
            task,
            payload,
            attempt,
            max_attempts,
            priority,
            queue,
            created_at,
            scheduled_at,
            run_at,
            started_at,
            meta,
        )
        if workflow_id is not None:
            job.workflow_id = workflow_id
        claimed.append(Claimed(job, timeout, cancel_requested))
    return claimed


def _step_context(statements: Statements, claimed: list[Claimed]) -> Operation[None]:
    """Give the workflow steps among ``claimed`` their ``upstream`` and ``dependents``: one more
    statement, only when a claim leased steps (see ``step_context`` in ``_sql.workflows``)."""
    steps = {item.job.id: item.job for item in claimed if item.job.workflow_id is not None}
    if not steps:
        return
    rows: Sequence[Any] = yield statements.workflows.step_context, {"ids": list(steps)}
    for job_id, upstream, dependents in rows:
        job = steps[job_id]
        job.upstream = upstream_infos(upstream)
        job.dependents = tuple(dependents or ())


def upstream_infos(entries: Sequence[dict[str, Any]] | None) -> dict[int, JobInfo]:
    """``job.upstream`` from ``step_context``'s JSON array (see ``_sql.workflows``), by job id."""
    found: dict[int, JobInfo] = {}
    for e in entries or ():
        found[int(e["id"])] = JobInfo(
            id=int(e["id"]),
            task=e["task"],
            queue=e["queue"],
            status=JobStatus(e["state"]),
            attempts=e["attempt"],
            max_attempts=e["max_attempts"],
            priority=e["priority"],
            payload=None,
            result=e["result"],
            error=JobError.from_json(e["error"]),
            created_at=_moment(e["created_at"]) or datetime.fromtimestamp(0, timezone.utc),
            started_at=_moment(e["started_at"]),
            finished_at=_moment(e["finished_at"]),
            run_at=_moment(e["run_at"]) or datetime.fromtimestamp(0, timezone.utc),
            dedupe_key=e["dedupe_key"],
            workflow_id=e["workflow_id"],
        )
    return found


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(float(epoch), timezone.utc)


def upsert_limits(statements: Statements, definitions: Sequence[TaskDefinition]) -> Operation[bool]:
    """Store the cluster-wide limits the worker's tasks declare."""
    limited = [d for d in definitions if d.concurrency is not None or d.rate_limit is not None]
    if limited:
        yield (
            statements.upsert_limits,
            {
                "tasks": json.dumps([d.name for d in limited]),
                "concurrency": json.dumps([d.concurrency for d in limited]),
                "rate_count": json.dumps(
                    [d.rate_limit.count if d.rate_limit else None for d in limited]
                ),
                "rate_period": json.dumps(
                    [d.rate_limit.period if d.rate_limit else None for d in limited]
                ),
            },
        )
    return True


def finish(
    statements: Statements,
    worker_id: uuid.UUID,
    outcomes: Sequence[Outcome],
    *,
    plain: bool = False,
) -> Operation[Finished]:
    """Write many outcomes in one statement; report those whose lease was lost. Outcomes
    already ``written`` (by a transactional task's own transaction) are skipped. ``plain``:
    they are all of jobs outside any workflow (no dependents to settle: a cheaper statement)."""
    outcomes = [o for o in outcomes if not o.written]
    if not outcomes:
        return Finished({}, (), None)
    params: dict[str, Any] = {"worker_id": worker_id, **finish_parameters(outcomes)}
    rows: Sequence[Any] = yield statements.finish_for(plain=plain), params
    written = [FinishedRow._make(row) for row in rows]
    retries = [row.run_at for row in written if row.state == "queued"]
    recorded = {row.id: row.state for row in written}
    return _finished(outcomes, recorded, min(retries) if retries else None)


def finish_and_claim(
    statements: Statements,
    worker_id: uuid.UUID,
    outcomes: Sequence[Outcome],
    tasks: Sequence[str],
    queues: Sequence[str] | None,
    limit: int,
    *,
    plain: bool = False,
) -> Operation[tuple[Finished, Claims]]:
    """Write ``outcomes`` (as :func:`finish`, ``plain`` likewise) and lease up to ``limit`` jobs
    (as :func:`claim`) in one statement, so a busy worker pays one round trip and one commit per
    batch. Outcomes already ``written`` (by a transactional task's own transaction) are not
    written again."""
    outcomes = [o for o in outcomes if not o.written]
    params: dict[str, Any] = {
        "worker_id": worker_id,
        "tasks": list(tasks),
        "limit": limit,
        **finish_parameters(list(outcomes)),
    }
    if queues is not None:
        params["queues"] = list(queues)
    statement = statements.finish_and_claim_for(in_queues=queues is not None, plain=plain)
    rows = yield statement, params
    claimed_rows: list[Any] = []
    recorded: dict[int, str] = {}
    next_retry = None
    alive = True
    row: Any
    for row in rows:
        if row[0]:  # "claimed": a leased job
            claimed_rows.append(row[1 : 1 + _CLAIMED])
        else:  # the summary of the outcomes written
            summary = FinishSummaryRow._make(row[1 + _CLAIMED :])
            next_retry = summary.next_run_at
            alive = bool(summary.alive)
            recorded = dict(
                zip(summary.written_ids or (), summary.written_states or (), strict=True)
            )
    claims = Claims(_claimed(claimed_rows), alive)
    yield from _step_context(statements, claims.jobs)
    return _finished(outcomes, recorded, next_retry), claims


def lost_lease(outcomes: Sequence[Outcome]) -> Finished:
    """``Finished`` for outcomes none of which could be written (the lease was lost)."""
    return _finished(outcomes, {}, None)


def _finished(
    outcomes: Sequence[Outcome], recorded: dict[int, str], next_run_at: datetime | None
) -> Finished:
    """What a finish wrote (job id -> state), and the outcomes it could not."""
    lost = tuple(o for o in outcomes if o.job_id not in recorded)
    for outcome in lost:
        log.warning(
            "job %s attempt %s: lease lost (the job was rescued or handed back); "
            "its %s outcome was not recorded",
            outcome.job_id,
            outcome.attempt,
            outcome.state,
        )
    return Finished(recorded, lost, next_run_at)


def hand_back(
    statements: Statements, worker_id: uuid.UUID, keep: Sequence[int] = ()
) -> Operation[int]:
    """Requeue the jobs this worker holds in the database, except ``keep``."""
    rows = yield statements.hand_back, {"worker_id": worker_id, "keep": list(keep)}
    handed_back = int(rows[0].handed_back) if rows else 0
    if handed_back and keep:
        log.warning("handed back %d jobs claimed by a statement whose answer was lost", handed_back)
    return handed_back


def next_run_at(statements: Statements, tasks: Sequence[str]) -> Operation[float | None]:
    """The epoch time the earliest queued job of ``tasks`` is due, if any."""
    (row,) = yield statements.next_run_at, {"tasks": list(tasks)}
    return row.run_at.timestamp() if row.run_at is not None else None


@dataclass(frozen=True)
class Rescue:
    requeued: int
    failed: int
    workers: int


def rescue(
    statements: Statements,
    worker_id: uuid.UUID,
    lease_timeout: float,
    events: EventHub | None = None,
) -> Operation[Rescue]:
    """Requeue the jobs of workers silent for longer than their lease (``lease_timeout`` for
    workers that stored none), never the rescuer's own; ``events`` hears of each job rescued."""
    params = {"lease_timeout": lease_timeout, "worker_id": worker_id}
    (row,) = yield statements.rescue, params
    result = Rescue(int(row.requeued), int(row.failed), int(row.workers))
    if events is not None and events.active:
        rescued(events, row.jobs)
    if result.requeued or result.failed or result.workers:
        log.warning(
            "rescued the jobs of %d silent workers: %d queued again, %d failed (out of attempts)",
            result.workers,
            result.requeued,
            result.failed,
        )
    return result


def prune(
    statements: Statements, succeeded_age: float, failed_age: float, limit: int
) -> Operation[int]:
    """Delete finished jobs past their retention, at most ``limit`` of each kind, and finished
    workflows whole (at most ``limit`` workflows; a workflow's steps are pruned only with it)."""
    removed = yield statements.prune_succeeded, {"age": succeeded_age, "limit": limit}
    removed_failed = yield statements.prune_failed, {"age": failed_age, "limit": limit}
    (workflows,) = yield (
        statements.workflows.prune,
        {"succeeded_age": succeeded_age, "failed_age": failed_age, "limit": limit},
    )
    return len(removed) + len(removed_failed) + int(workflows.steps)
