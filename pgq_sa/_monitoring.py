"""What the queue is doing right now, gathered as plain dataclasses for any front end.

``pgq-sa status``, ``jobs list``, ``workers`` and the dashboard render these; a metrics exporter
can reuse them (:func:`task_backlog` is the cheap per-queue/task gauge source). Each function is
an operation generator (see :mod:`pgq_sa._ops.drive`) over the read-only statements of
:class:`pgq_sa._sql.monitoring.MonitoringStatements`, so it runs on a sync or an async bind alike.
Ages are measured against the database's clock, never the caller's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgq_sa import _validation as validation
from pgq_sa._ops.drive import Operation
from pgq_sa._ops.settings import read_durability
from pgq_sa._schema import JobStatus
from pgq_sa._sql import Statements

DEFAULT_WINDOW = 60.0  # seconds: throughput and latency are measured over the last minute
DEFAULT_SHORT_WINDOW = 10.0
DEFAULT_STALE_AFTER = 30.0  # seconds without a heartbeat (the default lease timeout): not live
MAX_JOB_LIST = 10_000
LATENCY_SAMPLE = 1_000  # start latency: at most the newest 1,000 finished jobs, plus running ones


@dataclass(frozen=True)
class TaskBacklog:
    """Live jobs of one task in one queue."""

    queue: str
    task: str
    due: int  # queued and due now
    scheduled: int  # queued for later (delayed, retry backoff, schedules)
    running: int
    oldest_due_at: datetime | None
    oldest_wait: float | None  # seconds the oldest due job has been waiting
    waiting: int = 0  # workflow steps waiting for other steps to finish


def task_backlog(statements: Statements) -> Operation[list[TaskBacklog]]:
    """Per (queue, task): queued due, queued for later, running, waiting, oldest wait. Reads only
    unfinished jobs (the partial indexes on queued, running and waiting rows); suitable for
    scrape-time gauges."""
    rows = yield statements.monitoring.task_backlog, None
    return [
        TaskBacklog(
            r.queue,
            r.task,
            r.due,
            r.scheduled,
            r.running,
            r.oldest_due_at,
            r.oldest_wait,
            r.waiting,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class WorkerState:
    """One row of the workers table, with how long ago it last heartbeated."""

    id: uuid.UUID
    name: str
    kind: str
    hostname: str
    pid: int
    queues: tuple[str, ...] | None  # None: every queue
    tasks: tuple[str, ...]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float
    running: int
    alive: bool
    heartbeat_interval: float | None = None  # its own settings (None: a worker of an earlier
    lease_timeout: float | None = None  # release, judged by ``stale_after``)

    def serves(self, queue: str, task: str) -> bool:
        """Would this worker claim a job of ``task`` in ``queue``?"""
        return task in self.tasks and (self.queues is None or queue in self.queues)


def list_workers(
    statements: Statements, stale_after: float = DEFAULT_STALE_AFTER
) -> Operation[list[WorkerState]]:
    """Every registered worker; ``alive`` is false once its heartbeat is older than its own
    lease, as the rescue judges it (``stale_after`` seconds for workers of earlier releases,
    which stored none); a dead one stays listed until a live worker's rescue forgets it."""
    rows = yield statements.monitoring.list_workers, None
    return [
        WorkerState(
            id=r.id,
            name=r.name,
            kind=r.kind,
            hostname=r.hostname,
            pid=r.pid,
            queues=tuple(r.queues) if r.queues is not None else None,
            tasks=tuple(r.tasks),
            concurrency=r.concurrency,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
            heartbeat_age=max(0.0, r.heartbeat_age),
            running=r.running,
            alive=r.heartbeat_age <= (r.lease_timeout or stale_after),
            heartbeat_interval=r.heartbeat_interval,
            lease_timeout=r.lease_timeout,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Latency:
    """Wait from ``run_at`` to start of the jobs started in the window (the running ones and at
    most the newest :data:`LATENCY_SAMPLE` finished ones); ``queue`` None: all queues."""

    queue: str | None
    started: int
    p50: float
    p95: float
    max: float


@dataclass(frozen=True)
class TaskStatus:
    """Everything ``pgq-sa status`` says about one task in one queue."""

    queue: str
    task: str
    due: int
    scheduled: int
    running: int
    failed: int  # failed jobs still kept (see Queue(keep_failed=...))
    cancelled: int
    oldest_wait: float | None
    oldest_due_at: datetime | None
    succeeded_recently: int  # in the window
    failed_recently: int
    cancelled_recently: int
    finished_short: int  # finished in the short window
    rate: float  # finished per second over the window
    served: bool  # some live worker would claim it
    waiting: int = 0  # workflow steps waiting for other steps

    @property
    def stranded(self) -> bool:
        """Jobs wait that no live worker declares: they stay queued until one does."""
        return (self.due + self.scheduled) > 0 and not self.served


@dataclass(frozen=True)
class QueueStatus:
    """The sums of one queue's tasks, and its pause switch."""

    name: str
    paused: bool
    due: int
    scheduled: int
    running: int
    failed: int
    oldest_wait: float | None
    rate: float
    rate_short: float
    waiting: int = 0


@dataclass(frozen=True)
class Status:
    """A consistent picture (one transaction, one database clock) of the whole schema."""

    at: datetime
    window: float
    short_window: float
    stale_after: float
    tasks: list[TaskStatus]
    queues: list[QueueStatus]
    workers: list[WorkerState]
    latency: list[Latency] = field(default_factory=list)
    durability: str = "durable"

    @property
    def live_workers(self) -> list[WorkerState]:
        return [w for w in self.workers if w.alive]

    @property
    def overall_latency(self) -> Latency | None:
        return next((entry for entry in self.latency if entry.queue is None), None)


def _check_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not 0 < value < 10**7:
        raise ValueError(f"{name} must be more than 0 seconds (and less than 10^7), got {value}")
    return float(value)


def status(
    statements: Statements,
    *,
    window: float = DEFAULT_WINDOW,
    short_window: float = DEFAULT_SHORT_WINDOW,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> Operation[Status]:
    """Backlog, outcomes and rates per queue and task, start latency, and the workers.

    Run it in one transaction (``run_sync`` on an Engine does) so every figure shares one
    ``now()``. The arguments are checked here, before anything is sent.
    """
    return _status(
        statements,
        _check_seconds(window, "window"),
        _check_seconds(short_window, "short_window"),
        _check_seconds(stale_after, "stale_after"),
    )


def _status(
    statements: Statements, window: float, short_window: float, stale_after: float
) -> Operation[Status]:
    m = statements.monitoring
    ((now,),) = yield m.clock, None
    backlog = yield from task_backlog(statements)
    finished = yield m.recent_finished, {"window": window, "short_window": short_window}
    unsuccessful = yield m.unsuccessful_counts, None
    workers = yield from list_workers(statements, stale_after)
    latency_rows = yield m.start_latency, {"window": window, "sample": LATENCY_SAMPLE}
    settings = yield m.queue_settings, None
    durability = yield from read_durability(statements)

    keys: set[tuple[str, str]] = {(b.queue, b.task) for b in backlog}
    keys |= {(r.queue, r.task) for r in finished}
    keys |= {(r.queue, r.task) for r in unsuccessful}
    live_by_key = {(b.queue, b.task): b for b in backlog}
    finished_by_key = {(r.queue, r.task): r for r in finished}
    unsuccessful_by_key = {(r.queue, r.task): r for r in unsuccessful}
    live = [w for w in workers if w.alive]
    tasks = [
        _task_status(
            key,
            live_by_key.get(key),
            finished_by_key.get(key),
            unsuccessful_by_key.get(key),
            any(w.serves(*key) for w in live),
            window,
        )
        for key in sorted(keys)
    ]
    paused = {r.name: r.paused for r in settings}
    queue_names = sorted({t.queue for t in tasks} | set(paused))
    queues = [
        _queue_status(
            name, paused.get(name, False), [t for t in tasks if t.queue == name], short_window
        )
        for name in queue_names
    ]
    latency = [Latency(r.queue, r.started, r.p50, r.p95, r.max) for r in latency_rows if r.started]
    return Status(
        now, window, short_window, stale_after, tasks, queues, workers, latency, durability
    )


def _task_status(
    key: tuple[str, str],
    backlog: TaskBacklog | None,
    finished: Any,
    unsuccessful: Any,
    served: bool,
    window: float,
) -> TaskStatus:
    succeeded = finished.succeeded if finished else 0
    failed = finished.failed if finished else 0
    cancelled = finished.cancelled if finished else 0
    return TaskStatus(
        queue=key[0],
        task=key[1],
        due=backlog.due if backlog else 0,
        scheduled=backlog.scheduled if backlog else 0,
        running=backlog.running if backlog else 0,
        failed=unsuccessful.failed if unsuccessful else 0,
        cancelled=unsuccessful.cancelled if unsuccessful else 0,
        oldest_wait=backlog.oldest_wait if backlog else None,
        oldest_due_at=backlog.oldest_due_at if backlog else None,
        succeeded_recently=succeeded,
        failed_recently=failed,
        cancelled_recently=cancelled,
        finished_short=finished.short if finished else 0,
        rate=(succeeded + failed + cancelled) / window,
        served=served,
        waiting=backlog.waiting if backlog else 0,
    )


def _queue_status(
    name: str, paused: bool, tasks: Sequence[TaskStatus], short_window: float
) -> QueueStatus:
    waits = [t.oldest_wait for t in tasks if t.oldest_wait is not None]
    return QueueStatus(
        name=name,
        paused=paused,
        due=sum(t.due for t in tasks),
        scheduled=sum(t.scheduled for t in tasks),
        running=sum(t.running for t in tasks),
        failed=sum(t.failed for t in tasks),
        oldest_wait=max(waits) if waits else None,
        rate=sum(t.rate for t in tasks),
        rate_short=sum(t.finished_short for t in tasks) / short_window,
        waiting=sum(t.waiting for t in tasks),
    )


@dataclass(frozen=True)
class JobSummary:
    """One line of ``pgq-sa jobs list``: a job without its payload, result or traceback."""

    id: int
    task: str
    queue: str
    status: JobStatus
    attempts: int
    max_attempts: int
    priority: int
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: uuid.UUID | None
    error_type: str | None
    error_message: str | None


def list_jobs(
    statements: Statements,
    *,
    status: JobStatus | str | None = None,
    task: str | None = None,
    queue: str | None = None,
    limit: int = 50,
) -> Operation[list[JobSummary]]:
    """The newest ``limit`` jobs (highest id first), optionally of one status, task and queue.
    The arguments are checked here, before anything is sent."""
    state = JobStatus(status).value if status is not None else None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if not 1 <= limit <= MAX_JOB_LIST:
        raise ValueError(f"limit must be between 1 and {MAX_JOB_LIST}, got {limit}")
    task = validation.task_name(task) if task is not None else None
    queue = validation.queue_name(queue) if queue is not None else None
    return _list_jobs(statements, state, {"task": task, "queue": queue, "limit": limit})


def _list_jobs(
    statements: Statements, state: str | None, params: dict[str, Any]
) -> Operation[list[JobSummary]]:
    rows = yield statements.monitoring.list_jobs[state], params
    return [job_summary(r) for r in rows]


def job_summary(r: Any) -> JobSummary:
    """A :class:`JobSummary` from a row of :func:`pgq_sa._sql.monitoring.job_summary_columns`."""
    return JobSummary(
        id=r.id,
        task=r.task,
        queue=r.queue,
        status=JobStatus(r.state),
        attempts=r.attempt,
        max_attempts=r.max_attempts,
        priority=r.priority,
        created_at=r.created_at,
        run_at=r.run_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        worker_id=r.worker_id,
        error_type=r.error_type,
        error_message=r.error_message,
    )
