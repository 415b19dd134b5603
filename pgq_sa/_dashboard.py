"""What the web dashboard reads, gathered as plain dataclasses: operations over the read-only
statements of :class:`pgq_sa._sql.dashboard.DashboardStatements` (and the monitoring ones).

Like :mod:`pgq_sa._monitoring`, every function is an operation generator, so it runs on a sync or
an async bind alike; inputs arrive validated (the web layer parses requests before anything is
sent). Nothing here writes: the dashboard's actions go through :class:`pgq_sa.Queue` and the
existing producer operations.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgq_sa import _monitoring as monitoring
from pgq_sa._errors import SchemaMissing
from pgq_sa._job import JobError
from pgq_sa._monitoring import JobSummary, Status, job_summary
from pgq_sa._ops import producer
from pgq_sa._ops.drive import Operation
from pgq_sa._schema import JobStatus
from pgq_sa._sql import Statements
from pgq_sa._sql.dashboard import INDEXED_STATES, READ_TABLES

CHART_MINUTES = 60
TASK_WINDOW = 3600.0  # seconds: the tasks page's outcomes, rates and run times
RUNTIME_SAMPLE = 5_000  # run-time percentiles: the newest finished jobs of the window
FAILURE_SAMPLE = 10_000  # failure groups: the newest failed jobs
SCAN_WINDOW = 100_000  # ids a task/queue filter on the history reads per page
NEIGHBOURS = 200  # upstream/downstream steps listed on a job's page
MAX_STEPS = 2_000  # steps of a workflow read for its graph
MAX_EDGES = 10_000


@dataclass(frozen=True)
class Access:
    """What the connected role may read and do (table and column privileges)."""

    role: str
    read: dict[str, bool]
    cancel: bool
    retry: bool
    pause: bool
    schedules: bool

    @property
    def writes(self) -> bool:
        """May the role take any action at all?"""
        return self.cancel or self.retry or self.pause or self.schedules

    @property
    def unreadable(self) -> list[str]:
        return [table for table, allowed in self.read.items() if not allowed]


def access(statements: Statements) -> Operation[Access]:
    """Check that the queue's tables exist, then what the role may do with them."""
    ((present),) = yield statements.dashboard.tables_present, None
    missing = [name for name in READ_TABLES if not getattr(present, name)]
    if missing:
        schema = statements.tables.schema
        raise SchemaMissing(
            f"the queue in schema {schema!r} is not installed or not up to date (missing: "
            f"{', '.join(missing)}): run `pgq-sa --schema {schema} db upgrade`"
        )
    ((row),) = yield statements.dashboard.privileges, None
    return Access(
        role=row.role,
        read={name: bool(getattr(row, f"read_{name}")) for name in READ_TABLES},
        cancel=bool(row.cancel),
        retry=bool(row.retry),
        pause=bool(row.pause),
        schedules=bool(row.schedules),
    )


def with_timeout(
    statements: Statements, operation: Operation[Any], seconds: float
) -> Operation[Any]:
    """Run ``operation`` under a transaction-local ``statement_timeout``."""
    yield statements.dashboard.statement_timeout, {"timeout": f"{int(seconds * 1000)}ms"}
    return (yield from operation)


def change_marker(statements: Statements) -> Operation[tuple[Any, ...]]:
    """A fingerprint of the queue that changes when a page would show something new."""
    ((row),) = yield statements.dashboard.change_marker, None
    return tuple(row)


# --- overview and tasks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Minute:
    """Jobs finished in one minute, by outcome."""

    start: datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class Overview:
    status: Status
    minutes: list[Minute]  # the last CHART_MINUTES minutes, oldest first, empty ones included


def throughput(statements: Statements, now: datetime) -> Operation[list[Minute]]:
    """Jobs finished per minute over the last hour, one entry per minute (zeros included)."""
    rows = yield statements.dashboard.throughput, {"window": CHART_MINUTES * 60.0}
    by_minute = {r.minute: Minute(r.minute, r.succeeded, r.failed, r.cancelled) for r in rows}
    current = now.replace(second=0, microsecond=0)
    starts = [current - timedelta(minutes=n) for n in range(CHART_MINUTES - 1, -1, -1)]
    return [by_minute.get(start, Minute(start)) for start in starts]


def overview(statements: Statements) -> Operation[Overview]:
    """The status of every queue and task (last minute), and the last hour's finishes."""
    state = yield from monitoring.status(statements)
    minutes = yield from throughput(statements, state.at)
    return Overview(state, minutes)


@dataclass(frozen=True)
class Runtime:
    queue: str
    task: str
    sampled: int
    p50: float | None
    p95: float | None
    max: float | None


@dataclass(frozen=True)
class TaskRow:
    """One task on the tasks page: the status over the last hour and its run times."""

    status: monitoring.TaskStatus
    runtime: Runtime | None

    @property
    def finished(self) -> int:
        s = self.status
        return s.succeeded_recently + s.failed_recently + s.cancelled_recently

    @property
    def failure_share(self) -> float | None:
        return self.status.failed_recently / self.finished if self.finished else None


@dataclass(frozen=True)
class Tasks:
    status: Status
    rows: list[TaskRow]
    sample: int


def tasks(statements: Statements) -> Operation[Tasks]:
    """Per (queue, task): backlog, outcomes and rate over the last hour, run-time percentiles."""
    state = yield from monitoring.status(statements, window=TASK_WINDOW)
    rows = yield (
        statements.dashboard.task_runtimes,
        {"window": TASK_WINDOW, "sample": RUNTIME_SAMPLE},
    )
    runtimes = {
        (r.queue, r.task): Runtime(r.queue, r.task, r.sampled, r.p50, r.p95, r.max) for r in rows
    }
    return Tasks(
        state,
        [TaskRow(t, runtimes.get((t.queue, t.task))) for t in state.tasks],
        RUNTIME_SAMPLE,
    )


# --- jobs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """A validated job-list request: every field already checked."""

    status: JobStatus | None = None
    task: str | None = None
    queue: str | None = None
    before: int | None = None  # keyset cursor: ids below this one
    limit: int = 50

    @property
    def windowed(self) -> bool:
        """A task/queue filter over the history, which no index serves: read a window of ids."""
        unindexed = self.status is None or self.status.value not in INDEXED_STATES
        return unindexed and (self.task is not None or self.queue is not None)


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobSummary]
    next_before: int | None  # the cursor of the next page, None on the last one
    searched_from: int | None  # windowed: the lowest id this page read (ids >= it were searched)


MAX_ID = 2**63 - 1


def job_page(statements: Statements, request: JobFilter) -> Operation[JobPage]:
    """One page of jobs, newest first, below ``request.before``."""
    before = request.before if request.before is not None else MAX_ID
    state = request.status.value if request.status else None
    key = (state, request.task is not None, request.queue is not None)
    params: dict[str, Any] = {
        "before": before,
        "task": request.task,
        "queue": request.queue,
        "limit": request.limit + 1,
    }
    if not request.windowed:
        rows = yield statements.dashboard.job_page[key], params
        jobs = [job_summary(r) for r in rows[: request.limit]]
        more = len(rows) > request.limit
        return JobPage(jobs, jobs[-1].id if more and jobs else None, None)
    if request.before is None:
        ((newest,),) = yield statements.dashboard.newest_id, None
        before = (newest or 0) + 1
        params["before"] = before
    floor = max(before - SCAN_WINDOW, 1)
    params["floor"] = floor
    rows = yield statements.dashboard.job_page_windowed[key], params
    jobs = [job_summary(r) for r in rows[: request.limit]]
    if len(rows) > request.limit and jobs:
        return JobPage(jobs, jobs[-1].id, None)
    return JobPage(jobs, floor if floor > 1 else None, floor)


def jobs_by_dedupe_key(statements: Statements, key: str, limit: int = 50) -> Operation[JobPage]:
    """Jobs with dedupe key ``key``: live ones (indexed) and those among the newest ids."""
    ((newest,),) = yield statements.dashboard.newest_id, None
    floor = max((newest or 0) - SCAN_WINDOW, 1)
    rows = yield (
        statements.dashboard.jobs_by_dedupe_key,
        {"key": key, "floor": floor, "limit": limit},
    )
    return JobPage([job_summary(r) for r in rows], None, floor)


@dataclass(frozen=True)
class Neighbour:
    id: int
    task: str
    status: JobStatus


@dataclass(frozen=True)
class JobDetail:
    """Everything stored about one job, for its page."""

    id: int
    task: str
    queue: str
    status: JobStatus
    attempts: int
    max_attempts: int
    priority: int
    payload: Any
    result: Any
    error: JobError | None
    meta: Any
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dedupe_key: str | None
    cancel_requested: bool
    timeout: float | None
    schedule: str | None
    scheduled_at: datetime | None
    worker_id: uuid.UUID | None
    worker_name: str | None
    worker_host: str | None
    workflow_id: int | None
    waiting_for: int
    on_upstream_failure: str | None
    upstream: list[Neighbour] = field(default_factory=list)
    downstream: list[Neighbour] = field(default_factory=list)


def job_detail(
    statements: Statements, job_id: int, readable: dict[str, bool] | None = None
) -> Operation[JobDetail | None]:
    """One job; the worker's name and the workflow's edges only if the role may read them."""
    readable = readable or {}
    detail = statements.dashboard
    query = detail.job_detail if readable.get("workers", True) else detail.job_detail_alone
    rows = yield query, {"job_id": job_id}
    if not rows:
        return None
    r = rows[0]
    upstream: list[Neighbour] = []
    downstream: list[Neighbour] = []
    if r.workflow_id is not None and readable.get("job_dependencies", True):
        edges = yield statements.dashboard.job_neighbours, {"job_id": job_id, "limit": NEIGHBOURS}
        for e in edges:
            side = upstream if e.direction == "upstream" else downstream
            side.append(Neighbour(e.id, e.task, JobStatus(e.state)))
    return JobDetail(
        id=r.id,
        task=r.task,
        queue=r.queue,
        status=JobStatus(r.state),
        attempts=r.attempt,
        max_attempts=r.max_attempts,
        priority=r.priority,
        payload=r.payload,
        result=r.result,
        error=JobError.from_json(r.error),
        meta=r.meta,
        created_at=r.created_at,
        run_at=r.run_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        dedupe_key=r.dedupe_key,
        cancel_requested=r.cancel_requested,
        timeout=r.timeout,
        schedule=r.schedule,
        scheduled_at=r.scheduled_at,
        worker_id=r.worker_id,
        worker_name=r.worker_name,
        worker_host=r.worker_host,
        workflow_id=r.workflow_id,
        waiting_for=r.waiting_for,
        on_upstream_failure=r.on_upstream_failure,
        upstream=upstream,
        downstream=downstream,
    )


# --- failures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureGroup:
    queue: str
    task: str
    error_type: str  # "" when the stored error names no type
    jobs: int
    newest_id: int
    newest_at: datetime | None
    oldest_at: datetime | None
    message: str | None


@dataclass(frozen=True)
class Failures:
    groups: list[FailureGroup]
    failed: int  # every failed job kept (exact)
    sample: int


def failures(statements: Statements) -> Operation[Failures]:
    """The newest failed jobs grouped by (queue, task, error type), and how many failed in all."""
    counts = yield statements.monitoring.unsuccessful_counts, None
    rows = yield statements.dashboard.failure_groups, {"sample": FAILURE_SAMPLE}
    groups = [
        FailureGroup(
            r.queue, r.task, r.error_type, r.jobs, r.newest_id, r.newest_at, r.oldest_at, r.message
        )
        for r in rows
    ]
    return Failures(groups, sum(r.failed for r in counts), FAILURE_SAMPLE)


def failure_group_ids(
    statements: Statements, queue: str, task: str, error_type: str, limit: int
) -> Operation[list[int]]:
    rows = yield (
        statements.dashboard.failure_group_ids,
        {"queue": queue, "task": task, "error_type": error_type, "limit": limit},
    )
    return [r.id for r in rows]


# --- workflows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowSummary:
    id: int
    name: str | None
    created_at: datetime
    steps: int
    counts: dict[str, int]  # steps per state
    last_finished_at: datetime | None

    @property
    def status(self) -> str:
        """The workflow's state, from its steps' states."""
        c = self.counts
        if self.steps == 0:
            return "empty"
        if c["running"] or c["queued"] or c["waiting"]:
            return "failing" if c["failed"] else "running"
        if c["failed"]:
            return "failed"
        if c["cancelled"]:
            return "cancelled"
        return "succeeded"


def _workflow_summary(r: Any) -> WorkflowSummary:
    counts = {state.value: getattr(r, state.value) for state in JobStatus}
    return WorkflowSummary(r.id, r.name, r.created_at, r.steps, counts, r.last_finished_at)


@dataclass(frozen=True)
class WorkflowPage:
    workflows: list[WorkflowSummary]
    next_before: int | None


def workflow_page(
    statements: Statements, before: int | None, limit: int = 50
) -> Operation[WorkflowPage]:
    rows = yield (
        statements.dashboard.workflow_page,
        {"before": before if before is not None else MAX_ID, "limit": limit + 1},
    )
    found = [_workflow_summary(r) for r in rows[:limit]]
    return WorkflowPage(found, found[-1].id if len(rows) > limit and found else None)


@dataclass(frozen=True)
class Step:
    id: int
    task: str
    queue: str
    status: JobStatus
    attempts: int
    max_attempts: int
    waiting_for: int
    on_upstream_failure: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error_type: str | None


@dataclass(frozen=True)
class WorkflowGraph:
    workflow: WorkflowSummary
    steps: list[Step]
    edges: list[tuple[int, int]]  # (depends_on, job_id)
    truncated: bool


def workflow_graph(statements: Statements, workflow_id: int) -> Operation[WorkflowGraph | None]:
    rows = yield statements.dashboard.workflow, {"workflow_id": workflow_id}
    if not rows:
        return None
    summary = _workflow_summary(rows[0])
    step_rows = yield (
        statements.dashboard.workflow_steps,
        {"workflow_id": workflow_id, "limit": MAX_STEPS},
    )
    edge_rows = yield (
        statements.dashboard.workflow_edges,
        {"workflow_id": workflow_id, "limit": MAX_EDGES},
    )
    steps = [
        Step(
            r.id,
            r.task,
            r.queue,
            JobStatus(r.state),
            r.attempt,
            r.max_attempts,
            r.waiting_for,
            r.on_upstream_failure,
            r.started_at,
            r.finished_at,
            r.error_type,
        )
        for r in step_rows
    ]
    truncated = len(step_rows) >= MAX_STEPS or len(edge_rows) >= MAX_EDGES
    return WorkflowGraph(summary, steps, [(r.depends_on, r.job_id) for r in edge_rows], truncated)


def retry_many(statements: Statements, job_ids: Sequence[int]) -> Operation[int]:
    """Queue again each of ``job_ids`` that failed or was cancelled, with the producer's own
    retry operation (one statement per job, in the caller's transaction); how many were."""
    retried = 0
    for job_id in job_ids:
        retried += bool((yield from producer.retry(statements, job_id)))
    return retried


def cancel_many(statements: Statements, job_ids: Sequence[int]) -> Operation[int]:
    """Cancel each of ``job_ids`` with the producer's own cancel operation; how many were."""
    cancelled = 0
    for job_id in job_ids:
        cancelled += bool((yield from producer.cancel(statements, job_id)))
    return cancelled


# --- schedules -----------------------------------------------------------------------------------

DECLARED_WITHIN = 120.0  # seconds: a schedule no running worker touched for longer is orphaned


@dataclass(frozen=True)
class ScheduleRow:
    schedule: producer.ScheduleState
    declared: bool  # some running worker declared it lately


def schedules(statements: Statements) -> Operation[list[ScheduleRow]]:
    """Every schedule, and whether a running worker still declares it (database clock)."""
    ((now,),) = yield statements.monitoring.clock, None
    rows = yield from producer.list_schedules(statements)
    return [ScheduleRow(s, (now - s.seen_at).total_seconds() <= DECLARED_WITHIN) for s in rows]
