"""Running due jobs synchronously inside a test, through the workers' own statements.

``run_due_jobs`` registers a short-lived worker row, then claims one due job at a time with the
claim statement every worker uses, runs its handler on the calling thread (or, for ``async def``
handlers, on an event loop of its own) and records the outcome with the lease-guarded finish
statement: retries, backoff, failures and results are stored exactly as a real worker would store
them. Jobs the handlers enqueue are picked up in the same call, and so are workflow steps the
moment their dependencies are done (the finish statement queues them, as for a real worker; a
step's ``job.add_to_workflow`` additions commit with its success). ``run_due_jobs_async`` is the
same loop for async tests (asyncio or trio). Cluster-wide concurrency and rate limits are not
applied: a test wants every due job run now.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import sniffio

from pgq_sa import _validation as validation
from pgq_sa._decisions import Outcome
from pgq_sa._job import JobError
from pgq_sa._ops import worker as protocol
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import Operation, run_async, run_sync
from pgq_sa._ops.worker import Claimed, Identity
from pgq_sa._queue import Queue
from pgq_sa._schema import JobStatus
from pgq_sa._sql import Statements
from pgq_sa._sql.testing import make_due
from pgq_sa._tasks import TaskDefinition
from pgq_sa._worker.handlers import run_async_handler, run_sync_handler

__all__ = ["JobRun", "run_due_jobs", "run_due_jobs_async"]

DEFAULT_MAX_JOBS = 1000
# The test runner never heartbeats: its row holds a lease long enough for any test.
RUNNER_HEARTBEAT = 3600.0
RUNNER_LEASE = 7200.0


@dataclass(frozen=True)
class JobRun:
    """One attempt run by :func:`run_due_jobs`, and the state it left the job in."""

    id: int
    task: str
    attempt: int
    payload: Any
    status: JobStatus
    """``succeeded``, ``failed``, ``cancelled``, or ``queued`` when a retry was scheduled."""
    result: Any
    error: JobError | None

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.succeeded


@dataclass(frozen=True)
class _Plan:
    queue: Queue
    statements: Statements
    identity: Identity
    definitions: dict[str, TaskDefinition]
    queues: tuple[str, ...] | None
    include_delayed: bool
    max_jobs: int

    @property
    def tasks(self) -> list[str]:
        return sorted(self.definitions)


def _plan(
    queue: object,
    tasks: Iterable[str] | None,
    queues: Iterable[str] | None,
    include_delayed: object,
    max_jobs: object,
) -> _Plan:
    """Check every argument before any SQL runs."""
    if not isinstance(queue, Queue):
        raise TypeError(f"queue must be a pgq_sa.Queue, got {type(queue).__name__}")
    if not isinstance(include_delayed, bool):
        raise TypeError("include_delayed must be a bool")
    limit = validation._integer(max_jobs, "max_jobs")
    if limit < 1:
        raise ValueError("max_jobs must be at least 1")
    registered = queue.tasks
    if tasks is None:
        definitions = registered
    else:
        if isinstance(tasks, str):
            raise TypeError("tasks must be a list of task names, not one string")
        names = [validation.task_name(name) for name in tasks]
        unknown = sorted(set(names) - set(registered))
        if unknown:
            raise ValueError(f"tasks not registered on this queue: {', '.join(unknown)}")
        definitions = {name: registered[name] for name in names}
    if not definitions:
        raise ValueError("the queue has no registered tasks to run")
    if queues is not None:
        if isinstance(queues, str):
            raise TypeError("queues must be a list of queue names, not one string")
        queues = tuple(validation.queue_name(name) for name in queues)
    return _Plan(
        queue=queue,
        statements=queue.statements,
        identity=Identity.new("testing"),
        definitions=definitions,
        queues=queues,
        include_delayed=include_delayed,
        max_jobs=limit,
    )


# --- what to send: shared by the sync and async loops ------------------------------------------


def _register(plan: _Plan) -> Operation[bool]:
    return protocol.register(
        plan.statements, plan.identity, plan.tasks, plan.queues, 1, RUNNER_HEARTBEAT, RUNNER_LEASE
    )


def _next(plan: _Plan) -> Operation[list[Claimed]]:
    """Claim the next due job (after making delayed ones due, when asked)."""
    if plan.include_delayed:
        yield make_due(plan.statements.tables), {"tasks": plan.tasks}
    claims = yield from protocol.claim(
        plan.statements, plan.identity.id, plan.tasks, plan.queues, 1
    )
    if not claims.alive:
        raise RuntimeError(
            "the test runner's worker row was removed while it ran (another worker's rescue?)"
        )
    return claims.jobs


def _finish(plan: _Plan, item: Claimed, outcome: Outcome) -> Operation[protocol.Finished]:
    """Write the outcome; with the steps a workflow step added, when it succeeded (one
    transaction on an Engine: a lost lease raises, which rolls them back)."""
    job = item.job
    if not job._steps or outcome.state != "succeeded":
        finished = yield from protocol.finish(plan.statements, plan.identity.id, [outcome])
        return finished
    steps = plan.queue._added_steps(job._steps)
    finished = yield from wf_operations.finish_with_steps(
        plan.statements, plan.identity.id, job.id, outcome, steps
    )
    if finished.lost:
        raise RuntimeError(f"job {job.id}: the lease was lost; the steps it added are dropped")
    return finished


def _close(plan: _Plan) -> Operation[None]:
    """Requeue whatever is still held (a handler interrupted by a BaseException), then leave."""
    yield from protocol.hand_back(plan.statements, plan.identity.id)
    yield from protocol.deregister(plan.statements, plan.identity.id)


def _prepare(plan: _Plan, item: Claimed) -> tuple[TaskDefinition, float | None]:
    definition = plan.definitions[item.job.task]
    if item.cancel_requested:
        item.job.request_cancel("cancel")
    return definition, item.timeout or definition.timeout


def _record(item: Claimed, outcome: Outcome, finished: protocol.Finished) -> JobRun:
    state = finished.recorded.get(item.job.id)
    if state is None:
        raise RuntimeError(
            f"job {item.job.id}: its outcome was not recorded (the lease was lost: another worker "
            "rescued or handed back the job while the test ran it)"
        )
    return JobRun(
        id=item.job.id,
        task=item.job.task,
        attempt=item.job.attempt,
        payload=item.job.payload,
        status=JobStatus(state),
        result=json.loads(outcome.result) if outcome.result is not None else None,
        error=JobError.from_json(json.loads(outcome.error)) if outcome.error else None,
    )


# --- how to run it -----------------------------------------------------------------------------


def run_due_jobs(
    queue: Queue,
    bind: Any,
    *,
    tasks: Iterable[str] | None = None,
    queues: Iterable[str] | None = None,
    include_delayed: bool = False,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> list[JobRun]:
    """Run every due job of ``queue``'s tasks now, one at a time, and return what ran.

    ``bind`` is a sync Engine (each statement commits) or a Connection/Session (the statements
    join its transaction). Jobs enqueued by the handlers run too. ``include_delayed`` also runs
    jobs whose ``run_at`` is in the future and retries scheduled by a failed attempt, so a
    failing task runs until its ``max_attempts`` are used. ``tasks`` / ``queues`` restrict what
    is claimed; at most ``max_jobs`` attempts run. ``async def`` handlers run on an event loop of
    their own: from an async test, use :func:`run_due_jobs_async`.
    """
    plan = _plan(queue, tasks, queues, include_delayed, max_jobs)
    if any(d.is_async for d in plan.definitions.values()) and _in_event_loop():
        raise RuntimeError(
            "run_due_jobs was called inside a running event loop and the queue has async "
            "handlers: await run_due_jobs_async(...) instead"
        )
    run_sync(bind, _register(plan))
    runs: list[JobRun] = []
    try:
        while len(runs) < plan.max_jobs:
            claimed = run_sync(bind, _next(plan))
            if not claimed:
                break
            (item,) = claimed
            definition, timeout = _prepare(plan, item)
            if definition.is_async:
                outcome = anyio.run(run_async_handler, definition, item.job, timeout)
            else:
                outcome = run_sync_handler(definition, item.job, timeout)
            finished = run_sync(bind, _finish(plan, item, outcome))
            runs.append(_record(item, outcome, finished))
    finally:
        run_sync(bind, _close(plan))
    return runs


async def run_due_jobs_async(
    queue: Queue,
    bind: Any,
    *,
    tasks: Iterable[str] | None = None,
    queues: Iterable[str] | None = None,
    include_delayed: bool = False,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> list[JobRun]:
    """:func:`run_due_jobs` for async tests: ``bind`` is an AsyncEngine, AsyncConnection or
    AsyncSession (asyncio), or a sync Engine (any anyio backend, trio included). ``async def``
    handlers run on the test's loop, ``def`` handlers in a worker thread."""
    plan = _plan(queue, tasks, queues, include_delayed, max_jobs)
    await run_async(bind, _register(plan))
    runs: list[JobRun] = []
    try:
        while len(runs) < plan.max_jobs:
            claimed = await run_async(bind, _next(plan))
            if not claimed:
                break
            (item,) = claimed
            definition, timeout = _prepare(plan, item)
            if definition.is_async:
                outcome = await run_async_handler(definition, item.job, timeout)
            else:
                outcome = await anyio.to_thread.run_sync(
                    run_sync_handler, definition, item.job, timeout
                )
            finished = await run_async(bind, _finish(plan, item, outcome))
            runs.append(_record(item, outcome, finished))
    finally:
        with anyio.CancelScope(shield=True):
            await run_async(bind, _close(plan))
    return runs


def _in_event_loop() -> bool:
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True
