"""Job lifecycle events and the hooks observers attach to a :class:`~pgq_sa.Queue`.

``queue.events`` is an :class:`EventHub`. Observers (metrics, tracing, logs, tests) subscribe
callbacks to the events of jobs (:class:`Enqueued`, :class:`Started`, :class:`Succeeded`,
:class:`Failed`, :class:`Retried`, :class:`Rescued`, :class:`Cancelled`); callbacks run
synchronously on the thread or event loop that emits, and one that raises is logged and skipped,
never breaking a worker or an enqueue. Events carry ids, names, attempts and timings, never a
payload. Two more hooks serve tracing: *meta providers* add entries to the ``meta`` of each new
job, and *handler scopes* are context managers entered around each handler run, on the handler's
own thread or task.

With nothing attached, emitting costs one attribute check (``hub.active``) and allocates
nothing: the workers and the producer test it before building any event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from pgq_sa._decisions import Outcome
    from pgq_sa._job import Job

log = logging.getLogger("pgq_sa._events")

EventKind = Literal["enqueued", "started", "succeeded", "failed", "retried", "rescued", "cancelled"]
EVENT_KINDS: tuple[EventKind, ...] = (
    "enqueued",
    "started",
    "succeeded",
    "failed",
    "retried",
    "rescued",
    "cancelled",
)


@dataclass(frozen=True)
class JobEvent:
    """What every event says: which job, which attempt, which worker (when known), and when
    (``at``, epoch seconds on the emitting machine); ``workflow_id`` for a workflow step."""

    kind: ClassVar[EventKind]
    job_id: int
    task: str
    queue: str
    attempt: int
    worker_id: uuid.UUID | None
    at: float = field(compare=False)
    workflow_id: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Enqueued(JobEvent):
    """The insert statement created the job (on a Session or Connection: not yet committed).

    ``attempt`` is 0 and ``worker_id`` None. A ``dedupe_key`` already held by a live job emits
    nothing: no job was created. Jobs of periodic schedules emit nothing either.
    """

    kind: ClassVar[EventKind] = "enqueued"


@dataclass(frozen=True)
class Started(JobEvent):
    """A worker is about to run the handler. ``wait``: seconds from when the job was due
    (``max(run_at, created_at)``) to its claim, on the database's clock."""

    kind: ClassVar[EventKind] = "started"
    wait: float | None


@dataclass(frozen=True)
class Finished(JobEvent):
    """The handler's attempt is over. ``run``: seconds the handler ran (the worker's monotonic
    clock); ``total``: seconds from the job's creation to the end of this attempt (earlier
    attempts and backoffs included)."""

    run: float
    total: float | None


@dataclass(frozen=True)
class Succeeded(Finished):
    kind: ClassVar[EventKind] = "succeeded"


@dataclass(frozen=True)
class _Errored(Finished):
    error_type: str
    error_message: str


@dataclass(frozen=True)
class Failed(_Errored):
    """The attempt failed and no attempt is left: the job is ``failed``."""

    kind: ClassVar[EventKind] = "failed"


@dataclass(frozen=True)
class Retried(_Errored):
    """The attempt failed (or asked for a retry); the job runs again after ``delay`` seconds."""

    kind: ClassVar[EventKind] = "retried"
    delay: float


@dataclass(frozen=True)
class Cancelled(_Errored):
    """The job was cancelled while it ran (``queue.cancel``)."""

    kind: ClassVar[EventKind] = "cancelled"


@dataclass(frozen=True)
class Rescued(JobEvent):
    """A worker's maintenance took the job back from a silent worker (``worker_id``, the one
    that stopped heartbeating; ``attempt``, the attempt it was running). ``state`` is the job's
    new state: ``"queued"`` (it will run again), ``"failed"`` (out of attempts) or
    ``"cancelled"`` (its cancellation was pending). Emitted by the rescuing worker."""

    kind: ClassVar[EventKind] = "rescued"
    state: str


Callback = Callable[[JobEvent], None]
MetaProvider = Callable[[str, str], "Mapping[str, Any] | None"]
HandlerScope = Callable[["Job"], AbstractContextManager[object]]


class Subscription:
    """A handle on something attached to an :class:`EventHub`; ``cancel()`` detaches it (also
    on leaving a ``with`` block). Idempotent."""

    def __init__(self, detach: Callable[[], None]) -> None:
        self._detach: Callable[[], None] | None = detach

    def cancel(self) -> None:
        detach, self._detach = self._detach, None
        if detach is not None:
            detach()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


@dataclass(frozen=True)
class _Subscriber:
    callback: Callback
    kinds: frozenset[str] | None


class EventHub:
    """The observers of one queue. Attach with :meth:`subscribe`, :meth:`add_meta_provider` and
    :meth:`add_handler_scope`; each returns a :class:`Subscription`. Safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Copy-on-write tuples: emitters read them without the lock.
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._meta_providers: tuple[MetaProvider, ...] = ()
        self._scopes: tuple[HandlerScope, ...] = ()
        self._wanted: frozenset[str] = frozenset()
        self.active = False  # anything attached at all: the one check on the hot path

    def __repr__(self) -> str:
        return (
            f"EventHub(subscribers={len(self._subscribers)}, "
            f"meta_providers={len(self._meta_providers)}, scopes={len(self._scopes)})"
        )

    # --- attaching -----------------------------------------------------------------------------

    def subscribe(self, callback: Callback, *, kinds: Iterable[str] | None = None) -> Subscription:
        """Call ``callback(event)`` for every event (or those whose ``kind`` is in ``kinds``).

        The callback runs on the thread or event loop that emits (a worker's handler thread,
        its loop, or the enqueuing caller): keep it quick and never block on I/O there. An
        exception it raises is logged (logger ``pgq_sa._events``) and otherwise ignored.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        wanted: frozenset[str] | None = None
        if kinds is not None:
            if isinstance(kinds, str):
                raise TypeError("kinds must be a collection of event kinds, not a str")
            wanted = frozenset(kinds)
            unknown = sorted(wanted - set(EVENT_KINDS))
            if unknown:
                raise ValueError(
                    f"unknown event kinds {unknown}; choose from {', '.join(EVENT_KINDS)}"
                )
        subscriber = _Subscriber(callback, wanted)
        return self._attach("_subscribers", subscriber)

    def add_meta_provider(self, provider: MetaProvider) -> Subscription:
        """Call ``provider(task, queue)`` for each job about to be enqueued (before any SQL);
        the mapping it returns (JSON-serialisable) is merged into the job's stored ``meta``,
        which handlers read as ``job.meta``. A provider that raises is logged and skipped."""
        if not callable(provider):
            raise TypeError(f"provider must be callable, got {type(provider).__name__}")
        return self._attach("_meta_providers", provider)

    def add_handler_scope(self, scope: HandlerScope) -> Subscription:
        """Enter ``scope(job)`` (a context manager) around each handler run, on the handler's
        thread or task, so context variables it sets are the handler's; the job's ``started``
        and outcome events are emitted inside it. One that raises is logged and skipped."""
        if not callable(scope):
            raise TypeError(f"scope must be callable, got {type(scope).__name__}")
        return self._attach("_scopes", scope)

    def _attach(self, name: str, item: Any) -> Subscription:
        with self._lock:
            setattr(self, name, (*getattr(self, name), item))
            self._refresh()

        def detach() -> None:
            with self._lock:
                items = list(getattr(self, name))
                if item in items:
                    items.remove(item)
                setattr(self, name, tuple(items))
                self._refresh()

        return Subscription(detach)

    def _refresh(self) -> None:
        wanted: set[str] = set()
        for subscriber in self._subscribers:
            wanted.update(EVENT_KINDS if subscriber.kinds is None else subscriber.kinds)
        self._wanted = frozenset(wanted)
        self.active = bool(self._subscribers or self._meta_providers or self._scopes)

    # --- emitting ------------------------------------------------------------------------------

    def emit(self, event: JobEvent) -> None:
        """Hand ``event`` to every interested subscriber; their failures are only logged."""
        for subscriber in self._subscribers:
            if subscriber.kinds is not None and event.kind not in subscriber.kinds:
                continue
            try:
                subscriber.callback(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", subscriber.callback, event.kind)

    def wants(self, kind: str) -> bool:
        """Whether any subscriber listens to events of ``kind``."""
        return kind in self._wanted

    def job_meta(self, task: str, queue: str) -> str | None:
        """The providers' merged meta for a new job, as JSON text (None when empty)."""
        meta: dict[str, Any] = {}
        for provider in self._meta_providers:
            try:
                extra = provider(task, queue)
                if extra:
                    json.dumps(extra)  # refuse what cannot be stored, before merging it
                    meta.update(extra)
            except Exception:
                log.exception("meta provider %r failed for task %r", provider, task)
        return json.dumps(meta, ensure_ascii=False) if meta else None

    def enqueued(
        self, jobs: Sequence[tuple[int, str, str]], workflow_id: int | None = None
    ) -> None:
        """Emit :class:`Enqueued` for ``(id, task, queue)`` of jobs an insert just created (the
        steps of workflow ``workflow_id``, when given)."""
        if not self.wants("enqueued"):
            return
        now = time.time()
        for job_id, task, queue in jobs:
            self.emit(Enqueued(job_id, task, queue, 0, None, now, workflow_id=workflow_id))

    def handling(self, job: Job, worker_id: uuid.UUID | None) -> _Run:
        """Observe one handler run: ``with hub.handling(job, worker) as run:`` enters the
        scopes and emits ``started``; the caller reports ``run.finished(outcome)`` inside."""
        return _Run(self, job, worker_id)


class _Run:
    """One handler run being observed: its scopes, its start, and its outcome event."""

    __slots__ = ("_stack", "hub", "job", "started", "worker_id")

    def __init__(self, hub: EventHub, job: Job, worker_id: uuid.UUID | None) -> None:
        self.hub, self.job, self.worker_id = hub, job, worker_id
        self._stack: ExitStack | None = None
        self.started = 0.0

    def __enter__(self) -> _Run:
        hub, job = self.hub, self.job
        if hub._scopes:
            stack = self._stack = ExitStack()
            for scope in hub._scopes:
                try:
                    stack.enter_context(_guarded(scope(job)))
                except Exception:
                    log.exception("handler scope %r failed for job %s", scope, job.id)
        self.started = time.monotonic()
        if hub.wants("started"):
            wait = None
            if job.started_at is not None:
                due = max(job.run_at, job.created_at) if job.run_at else job.created_at
                wait = max((job.started_at - due).total_seconds(), 0.0)
            hub.emit(
                Started(
                    job.id,
                    job.task,
                    job.queue,
                    job.attempt,
                    self.worker_id,
                    time.time(),
                    wait,
                    workflow_id=job.workflow_id,
                )
            )
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stack is not None:
            self._stack.__exit__(*exc_info)

    def finished(self, outcome: Outcome) -> None:
        """Emit the event of ``outcome``; nothing for a run stopped by shutdown (the job is
        handed back and runs again)."""
        job, hub = self.job, self.hub
        kind = _OUTCOME_KINDS[outcome.state]
        if job.cancel_reason == "shutdown" or not hub.wants(kind):
            return
        run = time.monotonic() - self.started
        total = _total(job.started_at, job.created_at, run)
        now = time.time()
        common = (job.id, job.task, job.queue, job.attempt, self.worker_id, now, run, total)
        step = job.workflow_id
        if outcome.state == "succeeded":
            hub.emit(Succeeded(*common, workflow_id=step))
            return
        error_type, message = _error_text(outcome.error)
        if outcome.state == "queued":
            delay = outcome.delay or 0.0
            hub.emit(Retried(*common, error_type, message, delay, workflow_id=step))
        elif outcome.state == "failed":
            hub.emit(Failed(*common, error_type, message, workflow_id=step))
        else:
            hub.emit(Cancelled(*common, error_type, message, workflow_id=step))


_OUTCOME_KINDS: dict[str, EventKind] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "queued": "retried",
    "cancelled": "cancelled",
}


def _total(started_at: datetime | None, created_at: datetime, run: float) -> float | None:
    if started_at is None:
        return None
    return max((started_at - created_at).total_seconds(), 0.0) + run


def _error_text(stored: str | None) -> tuple[str, str]:
    """The type and message of a stored error (its traceback is left out)."""
    if not stored:
        return "", ""
    data = json.loads(stored)
    return str(data.get("type", "")), str(data.get("message", ""))


@contextmanager
def _guarded(scope: AbstractContextManager[object]) -> Iterator[None]:
    """Enter and exit a handler scope, logging (never raising) what it raises itself."""
    try:
        scope.__enter__()
    except Exception:
        log.exception("handler scope %r failed on entry", scope)
        yield
        return
    try:
        yield
    except BaseException as error:  # the scope sees it; the worker still gets it
        try:
            scope.__exit__(type(error), error, error.__traceback__)
        except Exception:
            log.exception("handler scope %r failed on exit", scope)
        raise
    else:
        try:
            scope.__exit__(None, None, None)
        except Exception:
            log.exception("handler scope %r failed on exit", scope)


def rescued(hub: EventHub, rows: Sequence[Sequence[Any]] | None) -> None:
    """Emit :class:`Rescued` for the ``[id, task, queue, attempt, worker_id, state,
    workflow_id]`` rows the rescue statement returned."""
    if not rows or not hub.wants("rescued"):
        return
    now = time.time()
    for job_id, task, queue, attempt, worker_id, state, *step in rows:
        lost = uuid.UUID(worker_id) if worker_id else None
        workflow = step[0] if step else None
        common = (int(job_id), task, queue, int(attempt), lost, now)
        hub.emit(Rescued(*common, state, workflow_id=workflow))
