"""Running one handler and turning what happened into an :class:`~pgq_sa._decisions.Outcome`.

Shared by both workers: ``run_sync_handler`` runs a ``def`` handler on the calling thread;
``run_async_handler`` runs an ``async def`` handler on the current event loop inside a cancel
scope, so a timeout or a cancellation really stops it. Both report the run to the queue's
:class:`~pgq_sa._events.EventHub` (``started`` and the outcome, inside its handler scopes) when
anything is attached to it, and cost one attribute check when nothing is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from pgq_sa import _deadlines as deadlines
from pgq_sa import _decisions as decisions
from pgq_sa._decisions import Outcome
from pgq_sa._errors import JobCancelled, JobTimeout
from pgq_sa._events import EventHub
from pgq_sa._job import Job
from pgq_sa._tasks import TaskDefinition

log = logging.getLogger("pgq_sa.worker")


def interrupted(job: Job, timeout: float | None) -> Outcome:
    if job.cancel_reason == "timeout":
        error: BaseException = JobTimeout(f"timeout: the job ran longer than {timeout:g}s")
        return decisions.errored(job.id, job.attempt, job.max_attempts, error)
    return decisions.errored(
        job.id,
        job.attempt,
        job.max_attempts,
        JobCancelled("cancelled while running"),
        cancelled=True,
    )


def failed_around(job: Job, error: BaseException) -> Outcome:
    """Something escaped the handler's own error handling (a ``BaseException`` such as
    ``SystemExit`` raised by the handler, or a bug around it): the attempt fails like any other
    failure, and the worker goes on."""
    log.error("job %s: the worker failed around its handler", job.id, exc_info=error)
    return decisions.errored(job.id, job.attempt, job.max_attempts, error)


def run_sync_handler(
    definition: TaskDefinition,
    job: Job,
    timeout: float | None,
    events: EventHub | None = None,
    worker_id: uuid.UUID | None = None,
) -> Outcome:
    """Call a ``def`` handler; it sees a timeout or cancellation through ``job.cancelled``."""
    if events is None or not events.active:
        return _run_sync(definition, job, timeout)
    with events.handling(job, worker_id) as run:
        outcome = _run_sync(definition, job, timeout)
        run.finished(outcome)
    return outcome


def _run_sync(definition: TaskDefinition, job: Job, timeout: float | None) -> Outcome:
    started = time.monotonic()
    try:
        value: Any = definition.handler(job)
    except Exception as error:  # the handler's failure is the job's, not the worker's
        if job.cancelled and job.cancel_reason != "timeout":
            return interrupted(job, timeout)
        if job.cancel_reason == "timeout" or (timeout and time.monotonic() - started > timeout):
            job.request_cancel("timeout")
            return interrupted(job, timeout)
        return decisions.errored(job.id, job.attempt, job.max_attempts, error)
    if job.cancelled:
        return interrupted(job, timeout)
    if timeout is not None and time.monotonic() - started > timeout:
        job.request_cancel("timeout")
        return interrupted(job, timeout)
    return decisions.succeeded(job.id, job.attempt, value)


async def run_async_handler(
    definition: TaskDefinition,
    job: Job,
    timeout: float | None,
    events: EventHub | None = None,
    worker_id: uuid.UUID | None = None,
) -> Outcome:
    """Await an ``async def`` handler; a timeout or cancellation cancels it for real."""
    if events is None or not events.active:
        return await _run_async(definition, job, timeout)
    with events.handling(job, worker_id) as run:
        outcome = await _run_async(definition, job, timeout)
        run.finished(outcome)
    return outcome


async def _run_async(definition: TaskDefinition, job: Job, timeout: float | None) -> Outcome:
    scope = anyio.CancelScope()
    if timeout is not None:
        scope.deadline = anyio.current_time() + timeout
    token = anyio.lowlevel.current_token()
    loop_thread = threading.get_ident()

    def cancel_from_anywhere() -> None:
        if threading.get_ident() == loop_thread:
            scope.cancel()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing left to cancel
                anyio.from_thread.run_sync(scope.cancel, token=token)

    job.on_cancel(cancel_from_anywhere)
    value: Any = None
    try:
        with scope:
            value = await definition.handler(job)
    except Exception as error:
        if job.cancelled:
            return interrupted(job, timeout)
        return decisions.errored(job.id, job.attempt, job.max_attempts, error)
    if scope.cancelled_caught or job.cancelled:
        if not job.cancelled:
            job.request_cancel("timeout")
        return interrupted(job, timeout)
    return decisions.succeeded(job.id, job.attempt, value)


async def run_in_scope(
    definition: TaskDefinition,
    job: Job,
    timeout: float | None,
    scope: anyio.CancelScope,
    scopes: dict[int, anyio.CancelScope],
) -> Outcome:
    """Await an ``async def`` handler inside the cancel scope of the AsyncWorker's runner that
    runs it (one scope for the jobs a runner runs one after another: cheaper than a scope, a
    task and callbacks per job), registered in ``scopes`` so a cancellation can cancel it. The
    outcomes are those of :func:`run_async_handler`."""
    if job.cancelled:
        return interrupted(job, timeout)
    scopes[job.id] = scope
    if timeout is not None:
        scope.deadline = anyio.current_time() + timeout
    try:
        value = await definition.handler(job)
    except anyio.get_cancelled_exc_class():
        if scope.cancel_called and not job.cancelled:
            job.request_cancel("timeout")  # the deadline passed
        raise
    except Exception as error:
        if job.cancelled:
            return interrupted(job, timeout)
        return decisions.errored(job.id, job.attempt, job.max_attempts, error)
    finally:
        del scopes[job.id]
        if timeout is not None and not scope.cancel_called:
            scope.deadline = math.inf
    if job.cancelled or scope.cancel_called:
        if not job.cancelled:
            job.request_cancel("timeout")
        return interrupted(job, timeout)
    return decisions.succeeded(job.id, job.attempt, value)


async def run_in_thread(
    run: Callable[[], Outcome], job: Job, timeout: float | None, limiter: anyio.CapacityLimiter
) -> Outcome:
    """Run a ``def`` handler (``run``) in a worker thread of the event loop; at ``timeout`` it
    sees ``job.cancelled`` (a thread cannot be interrupted)."""
    watchdog = deadlines.timers()
    timer = (
        watchdog.call_later(timeout, partial(job.request_cancel, "timeout")) if timeout else None
    )
    try:
        return await anyio.to_thread.run_sync(run, limiter=limiter, abandon_on_cancel=True)
    finally:
        if timer is not None:
            watchdog.cancel(timer)
