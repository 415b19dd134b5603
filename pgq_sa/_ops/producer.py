"""Producer operations written once, as generators, for both the sync and the async executors.

Each operation yields ``(statement, params)`` and receives the resulting rows; it holds every
decision (which statement next, what the rows mean) and no I/O. Inputs arrive validated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgq_sa._events import EventHub
from pgq_sa._job import JobError, JobInfo
from pgq_sa._ops.drive import Operation
from pgq_sa._schema import JobStatus
from pgq_sa._sql import Statements

_DEDUPE_ROUNDS = 8


@dataclass(frozen=True)
class NewJob:
    """One validated job, ready to bind."""

    task: str
    queue: str
    payload: str | None
    priority: int
    max_attempts: int
    run_at: datetime | None
    delay: float | None
    dedupe_key: str | None
    meta: str | None = None  # JSON text, from the queue's meta providers


def _json_array(values: list[Any]) -> str:
    """A JSON array of ``values``; ``[]`` when all are None (the statement pads with NULLs)."""
    if all(value is None for value in values):
        return "[]"
    return json.dumps(values, ensure_ascii=False)


def _json_texts(texts: list[str | None]) -> str:
    """A JSON array of values already serialised; ``[]`` when all are None."""
    if all(value is None for value in texts):
        return "[]"
    return "[" + ",".join(value or "null" for value in texts) + "]"


def json_columns(jobs: Sequence[NewJob]) -> dict[str, str]:
    """The bulk insert's parameters: one JSON array (as text) per column."""
    payloads = [job.payload for job in jobs]
    return {
        "task": _json_array([job.task for job in jobs]),
        "queue": _json_array([job.queue for job in jobs]),
        "payload": "[]"
        if all(payload is None for payload in payloads)
        else "[" + ",".join(payload or "null" for payload in payloads) + "]",
        "priority": _json_array([job.priority for job in jobs]),
        "max_attempts": _json_array([job.max_attempts for job in jobs]),
        "run_at": _json_array([job.run_at.isoformat() if job.run_at else None for job in jobs]),
        "delay": _json_array([job.delay for job in jobs]),
        "dedupe_key": _json_array([job.dedupe_key for job in jobs]),
        "meta": _json_texts([job.meta for job in jobs]),
    }


def enqueue(
    statements: Statements, jobs: Sequence[NewJob], events: EventHub | None = None
) -> Operation[list[int]]:
    """Insert ``jobs`` in one statement; a held dedupe key resolves to its holder's id.

    Race-free: the insert either takes the key or waits for (and yields to) the concurrent
    transaction that holds it; the holder is then read in a fresh statement. If the holder
    finished in between, the job is inserted again, a bounded number of times. ``events``
    hears of each job an insert created, as soon as the statement ran (before any commit).
    """
    ids: list[int | None] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    for _ in range(_DEDUPE_ROUNDS):
        batch = [jobs[i] for i in pending]
        (row,) = yield statements.enqueue, json_columns(batch)
        for index, job_id in zip(pending, row.ids, strict=True):
            ids[index] = job_id
        skipped = [pending[ordinal - 1] for ordinal in row.skipped or ()]
        for index in skipped:
            ids[index] = None
        if events is not None and events.active:
            events.enqueued(
                [(job_id, jobs[i].task, jobs[i].queue) for i in pending if (job_id := ids[i])]
            )
        if not skipped:
            break
        keys = sorted({jobs[i].dedupe_key for i in skipped if jobs[i].dedupe_key is not None})
        holders = yield statements.live_ids_by_dedupe_key, {"keys": keys}
        holder_of = {row.dedupe_key: row.id for row in holders}
        pending = []
        for index in skipped:
            holder = holder_of.get(jobs[index].dedupe_key)
            if holder is None:
                pending.append(index)
            else:
                ids[index] = holder
        if not pending:
            break
    missing = [i for i, job_id in enumerate(ids) if job_id is None]
    if missing:
        raise RuntimeError(f"could not settle the dedupe keys of {len(missing)} jobs; try again")
    return [job_id for job_id in ids if job_id is not None]


def job_info(row: Any) -> JobInfo:
    return JobInfo(
        id=row.id,
        task=row.task,
        queue=row.queue,
        status=JobStatus(row.state),
        attempts=row.attempt,
        max_attempts=row.max_attempts,
        priority=row.priority,
        payload=row.payload,
        result=row.result,
        error=JobError.from_json(row.error),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        run_at=row.run_at,
        dedupe_key=row.dedupe_key,
        cancel_requested=row.cancel_requested,
        scheduled_at=row.scheduled_at,
        workflow_id=row.workflow_id,
    )


def get(statements: Statements, job_id: int) -> Operation[JobInfo | None]:
    rows = yield statements.get_job, {"job_id": job_id}
    return job_info(rows[0]) if rows else None


def mark_awaited(statements: Statements, job_id: int) -> Operation[None]:
    """Ask for the job's end to be announced on the finished channel (no-op once finished)."""
    yield statements.mark_awaited, {"job_id": job_id}


def cancel(statements: Statements, job_id: int) -> Operation[bool]:
    """Cancel a queued job (or a waiting workflow step) outright; flag a running one so its
    worker stops it."""
    rows = yield statements.cancel_queued, {"job_id": job_id}
    if rows:
        return True
    rows = yield statements.cancel_running, {"job_id": job_id}
    return bool(rows)


def retry(statements: Statements, job_id: int) -> Operation[bool]:
    rows = yield statements.retry_finished, {"job_id": job_id}
    return bool(rows)


def set_paused(statements: Statements, name: str, paused: bool) -> Operation[None]:
    yield statements.set_paused, {"name": name, "paused": paused}


@dataclass(frozen=True)
class QueueState:
    name: str
    paused: bool
    paused_at: datetime | None
    queued: int
    running: int


def list_queues(statements: Statements) -> Operation[list[QueueState]]:
    rows = yield statements.list_queues, None
    return [QueueState(r.name, r.paused, r.paused_at, r.queued, r.running) for r in rows]


@dataclass(frozen=True)
class ScheduleState:
    name: str
    expression: str
    timezone: str
    enabled: bool
    missed: str
    last_run: datetime | None
    next_run: datetime | None
    seen_at: datetime


def list_schedules(statements: Statements) -> Operation[list[ScheduleState]]:
    rows = yield statements.list_schedules, None
    return [
        ScheduleState(
            r.name,
            r.expression,
            r.timezone,
            r.enabled,
            r.missed,
            r.last_fire_at,
            r.next_fire_at,
            r.seen_at,
        )
        for r in rows
    ]


def set_schedule_enabled(statements: Statements, name: str, enabled: bool) -> Operation[bool]:
    rows = yield statements.set_schedule_enabled, {"schedule": name, "switch": enabled}
    return bool(rows)
