"""``Queue``: the task registry and the producer API (enqueue, get, cancel, retry, pause, and
workflows: enqueue_workflow, get, wait, cancel, retry).

A ``Queue`` is cheap, holds no connection and is safe to share between threads. Every method
validates its input first, then runs one operation of :mod:`pgq_sa._ops.producer` through the sync
or async executor; on a Session or Connection it joins the caller's transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import MetaData

from pgq_sa import _validation as validation
from pgq_sa._cron import CronSchedule, cron_schedule
from pgq_sa._errors import explained
from pgq_sa._events import EventHub
from pgq_sa._job import JobInfo, JobSpec, StepRequest
from pgq_sa._ops import producer as operations
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import AsyncBind, Operation, SyncBind, run_async, run_sync, url_of
from pgq_sa._schema import DEFAULT_SCHEMA, QueueTables, build_tables
from pgq_sa._sql import Statements
from pgq_sa._tasks import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, TaskDefinition, define_task
from pgq_sa._workflow import Workflow, WorkflowInfo

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _job_id(value: object, what: str = "job id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 1 <= value <= 2**63 - 1:
        raise ValueError(f"{what} {value} is out of range")
    return value


def _workflow_id(value: object) -> int:
    return _job_id(value, "workflow id")


class Queue:
    """A job queue stored in PostgreSQL schema ``schema``; ``metadata`` holds its tables."""

    def __init__(
        self,
        schema: str = DEFAULT_SCHEMA,
        *,
        max_payload_bytes: int = validation.DEFAULT_MAX_PAYLOAD_BYTES,
        keep_succeeded: float | timedelta = timedelta(days=1),
        keep_failed: float | timedelta = timedelta(days=14),
    ) -> None:
        """``keep_succeeded`` / ``keep_failed`` (failed and cancelled): how long finished jobs
        are kept before the workers' maintenance prunes them."""
        self.keep_succeeded = validation.seconds(keep_succeeded, "keep_succeeded")
        self.keep_failed = validation.seconds(keep_failed, "keep_failed")
        self.tables: QueueTables = build_tables(schema)
        self.statements = Statements.build(self.tables)
        self.max_payload_bytes = validation.byte_limit(max_payload_bytes, "max_payload_bytes")
        self._tasks: dict[str, TaskDefinition] = {}
        self._schedules: dict[str, CronSchedule] = {}
        self.events = EventHub()  # observers: see pgq_sa._events

    def __repr__(self) -> str:
        return f"Queue(schema={self.schema!r}, tasks={sorted(self._tasks)!r})"

    @property
    def schema(self) -> str:
        return self.tables.schema

    @property
    def metadata(self) -> MetaData:
        """The ``sqlalchemy.MetaData`` of the queue's tables."""
        return self.tables.metadata

    # --- the registry --------------------------------------------------------------------------

    @property
    def tasks(self) -> dict[str, TaskDefinition]:
        """Registered tasks by name (a copy)."""
        return dict(self._tasks)

    def task(
        self,
        name: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | timedelta | None = None,
        priority: int = 0,
        queue: str = DEFAULT_QUEUE,
        concurrency: int | None = None,
        rate_limit: str | tuple[int, float] | None = None,
        transactional: bool = False,
    ) -> Callable[[F], F]:
        """Register the decorated function (``def`` or ``async def``) as the handler of ``name``.

        ``name`` defaults to ``module.function``. The options are the defaults of the task's jobs;
        ``concurrency`` and ``rate_limit`` (``"100/s"``, ``"10/m"``) hold cluster-wide. With
        ``transactional=True`` the handler writes its effects on ``job.connection`` and they
        commit together with the job's completion (see docs/reliability.md).
        """

        def register(handler: F) -> F:
            task_name = name if name is not None else _default_name(handler)
            definition = define_task(
                task_name,
                handler,
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                queue=queue,
                concurrency=concurrency,
                rate_limit=rate_limit,
                transactional=transactional,
            )
            if definition.name in self._tasks:
                raise ValueError(f"task {definition.name!r} is already registered on this queue")
            self._tasks[definition.name] = dataclasses.replace(definition, owner=self)
            return handler

        if callable(name):
            raise TypeError("use @queue.task() or @queue.task('name'), with parentheses")
        return register

    @property
    def schedules(self) -> dict[str, CronSchedule]:
        """Registered periodic schedules by name (a copy)."""
        return dict(self._schedules)

    def periodic(
        self,
        expression: str,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        missed: str = "latest",
        catch_up_limit: int = 10,
        **task_options: Any,
    ) -> Callable[[F], F]:
        """Register the decorated function as a task that runs on a cron schedule.

        ``expression`` has 5 fields (minute hour day month weekday) or 6 with the seconds first.
        Each fire time becomes exactly one job (``job.scheduled_at``), whatever the number of
        workers. ``missed`` says what happens to fire times missed while no worker ran:
        ``"latest"`` (one run for the most recent), ``"skip"``, or ``"all"`` (up to
        ``catch_up_limit``). Other keywords are those of :meth:`task`.
        """

        def register(handler: F) -> F:
            task_name = name if name is not None else _default_name(handler)
            schedule = cron_schedule(task_name, expression, timezone, missed, catch_up_limit)
            if schedule.name in self._schedules:
                raise ValueError(f"schedule {schedule.name!r} is already registered")
            self.task(schedule.name, **task_options)(handler)
            self._schedules[schedule.name] = schedule
            return handler

        if callable(expression):
            raise TypeError("use @queue.periodic('CRON EXPRESSION', ...), with parentheses")
        return register

    # --- validation ----------------------------------------------------------------------------

    def _new_job(
        self,
        task: object,
        payload: Any,
        *,
        priority: object,
        delay: object,
        run_at: object,
        dedupe_key: object,
        queue: object,
        max_attempts: object,
        defaults: dict[tuple[object, ...], tuple[str, str, int, int]] | None = None,
    ) -> operations.NewJob:
        """Validate one job; ``defaults`` memoises the option checks shared by many jobs."""
        key = (task, queue, priority, max_attempts)
        try:
            options = defaults.get(key) if defaults is not None else None
        except TypeError:  # an unhashable option: validate it the slow way, which reports it
            options, defaults = None, None
        if options is None:
            options = self._job_options(task, queue, priority, max_attempts)
            if defaults is not None:
                defaults[key] = options
        if delay is not None and run_at is not None:
            raise ValueError("pass delay or run_at, not both")
        task_name, queue_name, job_priority, job_max_attempts = options
        events = self.events
        return operations.NewJob(
            task=task_name,
            queue=queue_name,
            payload=validation.payload_json(payload, limit=self.max_payload_bytes),
            priority=job_priority,
            max_attempts=job_max_attempts,
            run_at=None if run_at is None else validation.run_at(run_at),
            delay=0.0 if delay is None else validation.seconds(delay, "delay"),
            dedupe_key=validation.dedupe_key(dedupe_key),
            meta=events.job_meta(task_name, queue_name) if events.active else None,
        )

    def _job_options(
        self, task: object, queue: object, priority: object, max_attempts: object
    ) -> tuple[str, str, int, int]:
        """Task name, queue, priority and max_attempts, defaulted from the task's declaration."""
        task_name = validation.task_name(task)
        definition = self._tasks.get(task_name)
        if queue is None:
            queue = definition.queue if definition else DEFAULT_QUEUE
        if priority is None:
            priority = definition.priority if definition else 0
        if max_attempts is None:
            max_attempts = definition.max_attempts if definition else DEFAULT_MAX_ATTEMPTS
        return (
            task_name,
            validation.queue_name(queue),
            validation.priority(priority),
            validation.max_attempts(max_attempts),
        )

    def _new_jobs(self, specs: Iterable[JobSpec], label: str = "job") -> list[operations.NewJob]:
        if isinstance(specs, (str, bytes, JobSpec)) or not isinstance(specs, Iterable):
            raise TypeError("enqueue_many takes an iterable of JobSpec")
        defaults: dict[tuple[object, ...], tuple[str, str, int, int]] = {}
        jobs = []
        for position, spec in enumerate(specs):
            if not isinstance(spec, JobSpec):
                raise TypeError(f"item {position} is a {type(spec).__name__}, not a JobSpec")
            try:
                jobs.append(
                    self._new_job(
                        spec.task,
                        spec.payload,
                        priority=spec.priority,
                        delay=spec.delay,
                        run_at=spec.run_at,
                        dedupe_key=spec.dedupe_key,
                        queue=spec.queue,
                        max_attempts=spec.max_attempts,
                        defaults=defaults,
                    )
                )
            except (TypeError, ValueError) as error:
                raise type(error)(f"{label} {position} ({spec.task!r}): {error}") from None
        return jobs

    def _new_steps(self, flow: Workflow) -> list[wf_operations.NewStep]:
        """Validate every step of ``flow`` against this queue, before any SQL."""
        if not isinstance(flow, Workflow):
            raise TypeError(f"enqueue_workflow takes a pgq_sa.Workflow, got {type(flow).__name__}")
        if not flow.steps:
            raise ValueError("the workflow has no steps: add some with flow.add(...)")
        specs = flow.steps
        jobs = self._new_jobs([spec.job for spec in specs], "step")
        holders: dict[str, int] = {}
        for index, job in enumerate(jobs):
            if job.dedupe_key is None:
                continue
            if job.dedupe_key in holders:
                raise ValueError(
                    f"steps {holders[job.dedupe_key]} and {index} have the same dedupe_key "
                    f"{job.dedupe_key!r}; the steps of one workflow need keys of their own"
                )
            holders[job.dedupe_key] = index
        return [
            wf_operations.NewStep(job, spec.after, spec.on_upstream_failure)
            for job, spec in zip(jobs, specs, strict=True)
        ]

    def _added_steps(self, requests: Sequence[StepRequest]) -> list[wf_operations.NewStep]:
        """The steps a handler added with ``job.add_to_workflow``, with the queue's defaults and
        payload limit applied (the rest was checked when they were added)."""
        defaults: dict[tuple[object, ...], tuple[str, str, int, int]] = {}
        steps = []
        for request in requests:
            job = self._new_job(
                request.task,
                None,
                priority=request.priority,
                delay=request.delay,
                run_at=request.run_at,
                dedupe_key=None,
                queue=request.queue,
                max_attempts=request.max_attempts,
                defaults=defaults,
            )
            size = len(request.payload.encode()) if request.payload is not None else 0
            if size > self.max_payload_bytes:
                raise ValueError(
                    f"add_to_workflow({request.task!r}): the payload is {size} bytes of JSON; "
                    f"the limit is {self.max_payload_bytes} bytes"
                )
            job = dataclasses.replace(job, payload=request.payload)
            steps.append(
                wf_operations.NewStep(
                    job, request.after, request.on_upstream_failure, request.before
                )
            )
        return steps

    # --- running an operation: the driver's setting errors become pgq_sa's ---------------------

    def _run(self, bind: SyncBind, operation: Operation[T]) -> T:
        with explained(schema=self.schema, url=url_of(bind)):
            return run_sync(bind, operation)

    async def _run_async(self, bind: AsyncBind, operation: Operation[T]) -> T:
        with explained(schema=self.schema, url=url_of(bind)):
            return await run_async(bind, operation)

    # --- producer API, sync --------------------------------------------------------------------

    def enqueue(
        self,
        bind: SyncBind,
        task: str,
        payload: Any = None,
        *,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        dedupe_key: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
    ) -> int:
        """Enqueue one job on ``bind`` and return its id (or the id of the live job holding
        ``dedupe_key``). On a Session/Connection it commits or rolls back with the caller."""
        job = self._new_job(
            task,
            payload,
            priority=priority,
            delay=delay,
            run_at=run_at,
            dedupe_key=dedupe_key,
            queue=queue,
            max_attempts=max_attempts,
        )
        return self._run(bind, operations.enqueue(self.statements, [job], self.events))[0]

    def enqueue_many(self, bind: SyncBind, specs: Iterable[JobSpec]) -> list[int]:
        """Enqueue many jobs in one statement; ids come back in the order of ``specs``."""
        jobs = self._new_jobs(specs)
        if not jobs:
            return []
        return self._run(bind, operations.enqueue(self.statements, jobs, self.events))

    def get(self, bind: SyncBind, job_id: int) -> JobInfo | None:
        """The job ``job_id`` as stored now, or None."""
        return self._run(bind, operations.get(self.statements, _job_id(job_id)))

    def cancel(self, bind: SyncBind, job_id: int) -> bool:
        """Cancel a queued job, or ask a running one to stop; True if it was queued or running."""
        return self._run(bind, operations.cancel(self.statements, _job_id(job_id)))

    def retry(self, bind: SyncBind, job_id: int) -> bool:
        """Queue a failed or cancelled job again; True if it was."""
        return self._run(bind, operations.retry(self.statements, _job_id(job_id)))

    def wait(self, bind: SyncBind, job_id: int, timeout: float | None = None) -> JobInfo:
        """Block until job ``job_id`` has finished and return it; ``TimeoutError`` after
        ``timeout`` seconds, ``LookupError`` if there is no such job."""
        from pgq_sa import _waiting as waiting

        limit = None if timeout is None else validation.seconds(timeout, "timeout")
        with explained(schema=self.schema, url=url_of(bind)):
            return waiting.wait(self.statements, bind, _job_id(job_id), limit)

    def enqueue_workflow(self, bind: SyncBind, flow: Workflow) -> int:
        """Enqueue every step of ``flow`` on ``bind`` and return the workflow's id. On a
        Session/Connection it commits or rolls back with the caller, in a constant number of
        statements (one, unless a step's dedupe key is held: see docs/workflows.md)."""
        steps = self._new_steps(flow)
        operation = wf_operations.enqueue_workflow(self.statements, flow.name, steps, self.events)
        return run_sync(bind, operation)

    def get_workflow(self, bind: SyncBind, workflow_id: int) -> WorkflowInfo | None:
        """The workflow ``workflow_id`` and its steps as stored now, or None."""
        return run_sync(
            bind, wf_operations.get_workflow(self.statements, _workflow_id(workflow_id))
        )

    def wait_workflow(
        self, bind: SyncBind, workflow_id: int, timeout: float | None = None
    ) -> WorkflowInfo:
        """Block until every step of workflow ``workflow_id`` has finished and return it;
        ``TimeoutError`` after ``timeout`` seconds, ``LookupError`` if there is no such one."""
        from pgq_sa import _waiting as waiting

        limit = None if timeout is None else validation.seconds(timeout, "timeout")
        return waiting.wait_workflow(self.statements, bind, _workflow_id(workflow_id), limit)

    def cancel_workflow(self, bind: SyncBind, workflow_id: int) -> int:
        """Cancel every step of the workflow that has not finished (running ones are asked to
        stop); return how many steps that concerned (0: none, or no such workflow)."""
        operation = wf_operations.cancel_workflow(self.statements, _workflow_id(workflow_id))
        return run_sync(bind, operation)

    def retry_workflow(self, bind: SyncBind, workflow_id: int) -> int:
        """Run the failed steps of the workflow again, and the steps cancelled because of them
        (succeeded steps are kept); return how many steps were revived (0: nothing to retry)."""
        operation = wf_operations.retry_workflow(self.statements, _workflow_id(workflow_id))
        return run_sync(bind, operation)

    def pause(self, bind: SyncBind, name: str = DEFAULT_QUEUE) -> None:
        """Stop every worker from claiming jobs of queue ``name``; running jobs finish."""
        self._run(bind, operations.set_paused(self.statements, validation.queue_name(name), True))

    def resume(self, bind: SyncBind, name: str = DEFAULT_QUEUE) -> None:
        """Let workers claim jobs of queue ``name`` again."""
        self._run(bind, operations.set_paused(self.statements, validation.queue_name(name), False))

    # --- producer API, async -------------------------------------------------------------------

    async def enqueue_async(
        self,
        bind: AsyncBind,
        task: str,
        payload: Any = None,
        *,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        dedupe_key: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
    ) -> int:
        """:meth:`enqueue` on an AsyncSession, AsyncConnection, AsyncEngine or sync Engine."""
        job = self._new_job(
            task,
            payload,
            priority=priority,
            delay=delay,
            run_at=run_at,
            dedupe_key=dedupe_key,
            queue=queue,
            max_attempts=max_attempts,
        )
        return (
            await self._run_async(bind, operations.enqueue(self.statements, [job], self.events))
        )[0]

    async def enqueue_many_async(self, bind: AsyncBind, specs: Iterable[JobSpec]) -> list[int]:
        """:meth:`enqueue_many` on an async bind."""
        jobs = self._new_jobs(specs)
        if not jobs:
            return []
        return await self._run_async(bind, operations.enqueue(self.statements, jobs, self.events))

    async def get_async(self, bind: AsyncBind, job_id: int) -> JobInfo | None:
        return await self._run_async(bind, operations.get(self.statements, _job_id(job_id)))

    async def cancel_async(self, bind: AsyncBind, job_id: int) -> bool:
        return await self._run_async(bind, operations.cancel(self.statements, _job_id(job_id)))

    async def retry_async(self, bind: AsyncBind, job_id: int) -> bool:
        return await self._run_async(bind, operations.retry(self.statements, _job_id(job_id)))

    async def wait_async(
        self, bind: AsyncBind, job_id: int, timeout: float | None = None
    ) -> JobInfo:
        """:meth:`wait` for async code (asyncio or trio)."""
        from pgq_sa import _waiting as waiting

        limit = None if timeout is None else validation.seconds(timeout, "timeout")
        with explained(schema=self.schema, url=url_of(bind)):
            return await waiting.wait_async(self.statements, bind, _job_id(job_id), limit)

    async def enqueue_workflow_async(self, bind: AsyncBind, flow: Workflow) -> int:
        """:meth:`enqueue_workflow` on an async bind."""
        steps = self._new_steps(flow)
        operation = wf_operations.enqueue_workflow(self.statements, flow.name, steps, self.events)
        return await run_async(bind, operation)

    async def get_workflow_async(self, bind: AsyncBind, workflow_id: int) -> WorkflowInfo | None:
        operation = wf_operations.get_workflow(self.statements, _workflow_id(workflow_id))
        return await run_async(bind, operation)

    async def wait_workflow_async(
        self, bind: AsyncBind, workflow_id: int, timeout: float | None = None
    ) -> WorkflowInfo:
        """:meth:`wait_workflow` for async code (asyncio or trio)."""
        from pgq_sa import _waiting as waiting

        limit = None if timeout is None else validation.seconds(timeout, "timeout")
        return await waiting.wait_workflow_async(
            self.statements, bind, _workflow_id(workflow_id), limit
        )

    async def cancel_workflow_async(self, bind: AsyncBind, workflow_id: int) -> int:
        operation = wf_operations.cancel_workflow(self.statements, _workflow_id(workflow_id))
        return await run_async(bind, operation)

    async def retry_workflow_async(self, bind: AsyncBind, workflow_id: int) -> int:
        operation = wf_operations.retry_workflow(self.statements, _workflow_id(workflow_id))
        return await run_async(bind, operation)

    async def pause_async(self, bind: AsyncBind, name: str = DEFAULT_QUEUE) -> None:
        operation = operations.set_paused(self.statements, validation.queue_name(name), True)
        await self._run_async(bind, operation)

    async def resume_async(self, bind: AsyncBind, name: str = DEFAULT_QUEUE) -> None:
        operation = operations.set_paused(self.statements, validation.queue_name(name), False)
        await self._run_async(bind, operation)


def _default_name(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", None) or "task"
    return f"{module}.{getattr(handler, '__qualname__', handler.__name__)}"
