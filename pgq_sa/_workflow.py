"""Workflows as users write and read them: ``Workflow`` (a builder of steps and their order),
``Step`` handles, ``WorkflowInfo`` and ``WorkflowStatus``, and the errors workflows raise or store.

A ``Workflow`` is plain data until ``Queue.enqueue_workflow`` validates it against the queue (the
task defaults, the payload limit) and inserts it in one statement. Steps can only wait for steps
added before them, so a workflow cannot have a cycle; a handle from another workflow, an empty
workflow, an unknown ``on_upstream_failure`` or too many steps are refused with a clear message.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgq_sa import _validation as validation
from pgq_sa._job import MAX_STEPS, JobInfo, JobSpec, upstream_policy
from pgq_sa._schema import MAX_TASK_NAME_LENGTH, JobStatus

MAX_EDGES = 1_000_000
"""The most dependencies (``after`` entries) one workflow may have when it is enqueued."""


class WorkflowStatus(str, enum.Enum):
    """Where a workflow stands. ``running`` while any step has not finished; then ``succeeded``
    (every step succeeded), ``failed`` (a step failed for good) or ``cancelled`` (none failed,
    some were cancelled)."""

    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:
        return self.value


def workflow_status(states: Iterable[JobStatus | str]) -> WorkflowStatus:
    """The status of a workflow whose steps are in ``states``."""
    seen = {JobStatus(state) for state in states}
    if seen & {JobStatus.waiting, JobStatus.queued, JobStatus.running}:
        return WorkflowStatus.running
    if JobStatus.failed in seen:
        return WorkflowStatus.failed
    if JobStatus.cancelled in seen:
        return WorkflowStatus.cancelled
    return WorkflowStatus.succeeded


@dataclass(frozen=True, eq=False)
class Step:
    """A handle on a step added to a :class:`Workflow`: pass it in ``after=`` of later steps.
    ``index`` is its position (``WorkflowInfo.steps[index]`` once enqueued)."""

    workflow: Workflow = field(repr=False)
    index: int
    task: str


@dataclass(frozen=True)
class StepSpec:
    """One step as added: the job it becomes, what it waits for, and its upstream policy."""

    job: JobSpec
    after: tuple[int, ...]
    on_upstream_failure: str


class Workflow:
    """Steps (jobs) and the order between them, enqueued at once with
    :meth:`Queue.enqueue_workflow <pgq_sa.Queue.enqueue_workflow>`.

    ``name`` is for humans (listings, the dashboard); it may be None.
    """

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            validation._name(name, "workflow name", MAX_TASK_NAME_LENGTH)
        self.name = name
        self._steps: list[StepSpec] = []
        self._edges = 0

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={len(self._steps)})"

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> tuple[StepSpec, ...]:
        return tuple(self._steps)

    def add(
        self,
        task: str,
        payload: Any = None,
        *,
        after: Iterable[Step] = (),
        on_upstream_failure: str = "cancel",
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
    ) -> Step:
        """Add a step: a job of ``task`` that starts once every step in ``after`` succeeded.

        The options are those of ``Queue.enqueue`` (validated by ``enqueue_workflow``, before any
        SQL). ``on_upstream_failure``: what a failed or cancelled step in ``after`` (or further
        up) does to this one: ``"cancel"`` it (the default), or ``"run"`` it anyway.
        """
        task_name = validation.task_name(task)
        policy = upstream_policy(on_upstream_failure)
        parents = self._parents(after)
        if len(self._steps) >= MAX_STEPS:
            raise ValueError(f"a workflow has at most {MAX_STEPS} steps")
        if self._edges + len(parents) > MAX_EDGES:
            raise ValueError(f"a workflow has at most {MAX_EDGES} dependencies between its steps")
        spec = JobSpec(task_name, payload, priority, delay, run_at, dedupe_key, queue, max_attempts)
        self._steps.append(StepSpec(spec, parents, policy))
        self._edges += len(parents)
        return Step(self, len(self._steps) - 1, task_name)

    def add_many(
        self,
        task: str,
        payloads: Iterable[Any],
        *,
        after: Iterable[Step] = (),
        on_upstream_failure: str = "cancel",
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
    ) -> list[Step]:
        """Add one step of ``task`` per payload, each waiting for ``after`` (a fan-out)."""
        if isinstance(payloads, (str, bytes, Mapping)) or not isinstance(payloads, Iterable):
            raise TypeError("add_many takes an iterable of payloads (a list, say)")
        parents = list(after) if not isinstance(after, Step) else [after]
        return [
            self.add(
                task,
                payload,
                after=parents,
                on_upstream_failure=on_upstream_failure,
                priority=priority,
                delay=delay,
                run_at=run_at,
                queue=queue,
                max_attempts=max_attempts,
            )
            for payload in payloads
        ]

    def _parents(self, after: Iterable[Step]) -> tuple[int, ...]:
        if isinstance(after, Step):
            after = [after]
        if isinstance(after, (str, bytes)) or not isinstance(after, Iterable):
            raise TypeError("after must be a list of steps returned by add() or add_many()")
        parents: dict[int, None] = {}
        for handle in after:
            if not isinstance(handle, Step):
                kind = type(handle).__name__
                raise TypeError(f"after takes steps returned by add() or add_many(), got {kind}")
            if handle.workflow is not self:
                raise ValueError(
                    f"step {handle.index} ({handle.task!r}) belongs to another Workflow; a step "
                    "can only wait for steps of its own workflow"
                )
            parents[handle.index] = None
        return tuple(parents)


@dataclass(frozen=True)
class WorkflowInfo:
    """A snapshot of one stored workflow, as returned by ``Queue.get_workflow``."""

    id: int
    name: str | None
    status: WorkflowStatus
    created_at: datetime
    steps: list[JobInfo]
    """Every step, in the order they were added (steps added at run time follow)."""
    dependencies: dict[int, tuple[int, ...]]
    """For each step id, the ids of the steps it waits for."""

    @property
    def finished(self) -> bool:
        return self.status is not WorkflowStatus.running

    @property
    def finished_at(self) -> datetime | None:
        """When its last step finished, once the workflow has."""
        if not self.finished or not self.steps:
            return None
        return max((s.finished_at for s in self.steps if s.finished_at), default=None)

    def step(self, handle: Step) -> JobInfo:
        """The stored step of ``handle`` (from the :class:`Workflow` this was enqueued from)."""
        return self.steps[handle.index]

    def dependents(self, step_id: int) -> list[int]:
        """The ids of the steps that wait for step ``step_id``."""
        return [child for child, parents in self.dependencies.items() if step_id in parents]


def roots(info: WorkflowInfo) -> Sequence[JobInfo]:
    """The steps that wait for nothing."""
    return [s for s in info.steps if not info.dependencies.get(s.id)]
