"""The values users handle: ``JobSpec`` to describe a job, ``JobInfo`` to read one back,
``Job`` inside a handler, and ``Retry`` to ask for another attempt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from pgq_sa import _validation as validation
from pgq_sa._schema import JobStatus

MAX_STEPS = 100_000
"""The most steps one workflow may have when it is enqueued (and one attempt may add)."""
UPSTREAM_POLICIES = ("cancel", "run")


@dataclass(frozen=True)
class JobSpec:
    """One job to enqueue with :meth:`Queue.enqueue_many`; options left ``None`` take the task's."""

    task: str
    payload: Any = None
    priority: int | None = None
    delay: float | timedelta | None = None
    run_at: datetime | None = None
    dedupe_key: str | None = None
    queue: str | None = None
    max_attempts: int | None = None


def stable_type_name(stored: str) -> str:
    """The public name of a type pgq_sa stored under a module path in earlier releases
    (``pgq_sa.decisions.JobTimeout``, ``pgq_sa.workers.transactional.TransactionEnded``): its
    exceptions are all exported from ``pgq_sa`` under the same name."""
    if stored.startswith("pgq_sa.") and stored.count(".") > 1:
        return "pgq_sa." + stored.rsplit(".", 1)[1]
    return stored


@dataclass(frozen=True)
class JobError:
    """What a failed attempt left behind: the exception's type, message and traceback."""

    type: str
    message: str
    traceback: str | None = None
    attempt: int | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    @classmethod
    def from_json(cls, data: Any) -> JobError | None:
        if not isinstance(data, dict):
            return None
        return cls(
            type=stable_type_name(str(data.get("type", ""))),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
            attempt=data.get("attempt"),
        )


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one stored job, as returned by :meth:`Queue.get`."""

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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime
    dedupe_key: str | None = None
    cancel_requested: bool = False
    scheduled_at: datetime | None = None
    workflow_id: int | None = None  # the workflow this job is a step of, if any

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


# A job outside any workflow has no upstream: one shared empty mapping, not a dict per job (jobs
# are built by the hundred per claim, and every container they carry costs the GC).
NO_UPSTREAM: Mapping[int, JobInfo] = MappingProxyType({})


@dataclass
class Job:
    """The job a handler is running; ``cancelled`` turns True once it should stop."""

    id: int
    task: str
    payload: Any
    attempt: int
    max_attempts: int
    priority: int
    queue: str
    created_at: datetime
    scheduled_at: datetime | None = None
    run_at: datetime | None = None  # when the job was due
    started_at: datetime | None = None  # when this attempt was claimed (database clock)
    meta: dict[str, Any] | None = field(default=None, repr=False)  # e.g. a trace context
    workflow_id: int | None = None  # the workflow this job is a step of, if any
    upstream: Mapping[int, JobInfo] = field(default_factory=lambda: NO_UPSTREAM, repr=False)
    """A workflow step's direct dependencies as they finished, by job id (payloads left out)."""
    dependents: tuple[int, ...] = field(default=(), repr=False)
    """The ids of the workflow steps that wait for this one (when it was claimed)."""
    cancel_reason: str | None = field(default=None, repr=False)
    _cancel_callbacks: list[Callable[[], None]] | None = field(default=None, repr=False)
    _cancel_event: threading.Event | None = field(default=None, repr=False)
    _connection: Any = field(default=None, repr=False)
    _steps: list[StepRequest] | None = field(default=None, repr=False)

    def add_to_workflow(
        self,
        task: str,
        payload: Any = None,
        *,
        after: Iterable[AddedStep] = (),
        before: Iterable[int] = (),
        on_upstream_failure: str = "cancel",
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
    ) -> AddedStep:
        """Add a step to this step's workflow, committed together with this attempt's success.

        The new step waits for the steps in ``after`` (handles returned by earlier calls in this
        attempt); the existing steps whose ids are in ``before`` (waiting steps of the same
        workflow, typically ``job.dependents``) wait for it too. Nothing is added if the attempt
        does not succeed (a retry starts afresh) or lost its lease. The options are those of
        ``Workflow.add`` (no ``dedupe_key``: these steps are added exactly once anyway).
        """
        if self.workflow_id is None:
            raise RuntimeError(
                f"job {self.id} ({self.task!r}) is not a workflow step; add_to_workflow extends "
                "the workflow of the running step"
            )
        steps = self._steps if self._steps is not None else []
        request = step_request(
            len(steps),
            task,
            payload,
            after=after,
            before=before,
            on_upstream_failure=on_upstream_failure,
            priority=priority,
            delay=delay,
            run_at=run_at,
            queue=queue,
            max_attempts=max_attempts,
            owner=self,
        )
        steps.append(request)
        self._steps = steps
        return AddedStep(self.id, request.index, request.task)

    @property
    def connection(self) -> Any:
        """The connection of this attempt's transaction, in the handler of a task declared with
        ``transactional=True``: a ``sqlalchemy.Connection`` in a ``def`` handler, an
        ``AsyncConnection`` in an ``async def`` one. What the handler writes on it commits
        together with the job's completion, or not at all; never commit or roll it back yourself
        (``begin_nested()`` savepoints are fine)."""
        if self._connection is None:
            raise RuntimeError(
                f"job.connection is only available while the handler of a task declared with "
                f"@queue.task(..., transactional=True) runs; task {self.task!r} has none here"
            )
        return self._connection

    @property
    def cancelled(self) -> bool:
        """True once cancellation (or the timeout) was requested; sync handlers should poll it."""
        return self.cancel_reason is not None

    def request_cancel(self, reason: str) -> None:
        """Ask the handler to stop (``reason``: "cancel", "timeout" or "shutdown"); idempotent."""
        with _CANCEL_LOCK:
            if self.cancel_reason is not None:
                return
            self.cancel_reason = reason
            event, callbacks = self._cancel_event, list(self._cancel_callbacks or ())
        if event is not None:
            event.set()
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (from whichever thread cancels) once cancellation is requested."""
        with _CANCEL_LOCK:
            if self._cancel_callbacks is None:
                self._cancel_callbacks = []
            self._cancel_callbacks.append(callback)
            already = self.cancel_reason is not None
        if already:
            callback()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds until cancellation is requested; True if it was."""
        with _CANCEL_LOCK:
            if self.cancel_reason is not None:
                return True
            if self._cancel_event is None:
                self._cancel_event = threading.Event()
            event = self._cancel_event
        return event.wait(timeout)


@dataclass(frozen=True)
class AddedStep:
    """A step added by ``job.add_to_workflow``: pass it in ``after=`` of a later addition."""

    job_id: int  # the step that added it
    index: int  # its position among that attempt's additions
    task: str


@dataclass(frozen=True)
class StepRequest:
    """One ``add_to_workflow`` call, checked: options left None take the task's defaults when
    the step is written (the payload is JSON text already)."""

    index: int
    task: str
    payload: str | None
    after: tuple[int, ...]
    before: tuple[int, ...]
    on_upstream_failure: str
    priority: int | None
    delay: float | None
    run_at: datetime | None
    queue: str | None
    max_attempts: int | None


def upstream_policy(value: object) -> str:
    if value not in UPSTREAM_POLICIES:
        raise ValueError(
            f"on_upstream_failure must be 'cancel' (the default: a failed or cancelled upstream "
            f"step cancels this one) or 'run' (it runs anyway, e.g. to clean up); got {value!r}"
        )
    return str(value)


def step_request(
    index: int,
    task: object,
    payload: Any,
    *,
    after: Iterable[AddedStep],
    before: Iterable[int],
    on_upstream_failure: object,
    priority: object,
    delay: object,
    run_at: object,
    queue: object,
    max_attempts: object,
    owner: Job,
) -> StepRequest:
    """Check one ``job.add_to_workflow`` call in the handler, before anything is written: what
    needs the queue (the task's defaults, the queue's payload limit) is checked when the step is
    written, with the attempt's success."""
    if index >= MAX_STEPS:
        raise ValueError(f"an attempt adds at most {MAX_STEPS} steps")
    if isinstance(after, AddedStep):
        after = [after]
    if isinstance(after, (str, bytes)) or not isinstance(after, Iterable):
        raise TypeError("after must be a list of steps returned by add_to_workflow()")
    parents: dict[int, None] = {}
    for handle in after:
        if not isinstance(handle, AddedStep) or handle.job_id != owner.id:
            raise TypeError(
                "after takes steps returned by add_to_workflow() of this same attempt "
                f"(to wait for existing steps, they must be added before: use before=), "
                f"got {handle!r}"
            )
        parents[handle.index] = None
    if isinstance(before, (str, bytes)) or not isinstance(before, Iterable):
        raise TypeError("before must be a list of job ids (of waiting steps, e.g. job.dependents)")
    targets: dict[int, None] = {}
    for target in before:
        if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target < 2**63:
            raise TypeError(f"before takes job ids (ints), got {target!r}")
        if target == owner.id:
            raise ValueError("a step cannot make itself wait for a step it adds")
        targets[target] = None
    if delay is not None and run_at is not None:
        raise ValueError("pass delay or run_at, not both")
    return StepRequest(
        index=index,
        task=validation.task_name(task),
        payload=validation.payload_json(payload, limit=1 << 30),
        after=tuple(parents),
        before=tuple(targets),
        on_upstream_failure=upstream_policy(on_upstream_failure),
        priority=None if priority is None else validation.priority(priority),
        delay=None if delay is None else validation.seconds(delay, "delay"),
        run_at=None if run_at is None else validation.run_at(run_at),
        queue=None if queue is None else validation.queue_name(queue),
        max_attempts=None if max_attempts is None else validation.max_attempts(max_attempts),
    )


# One lock for the rare cancellation bookkeeping of every job: creating a lock (or an Event)
# per job costs more than the whole claim of a no-op job.
_CANCEL_LOCK = threading.Lock()


class Retry(Exception):
    """Raise from a handler to ask for another attempt after ``delay`` (seconds or timedelta)."""

    def __init__(self, delay: float | timedelta | None = None, reason: str | None = None) -> None:
        self.delay = None if delay is None else validation.seconds(delay, "Retry delay")
        self.reason = reason
        super().__init__(reason or "retry requested")
