"""The worker's long-lived services, written once for both workers as generators of effects.

Every database conversation of a running worker lives here: registering, the fetchers (claim,
finish-and-claim, hand back strays), the completer, the heartbeat (and re-registration), the
maintenance (rescue, retention), the scheduler, the listener, and the shutdown sequence. Each
service yields :mod:`.effects` and keeps its decisions in :class:`~.core.WorkerCore`; a driver
runs each one on a thread (:mod:`.thread_worker`) or as a task (:mod:`.async_worker`). Retrying
with backoff while the database is away is :func:`retrying`, the same for every service.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
from sqlalchemy.exc import DBAPIError

from pgq_sa._errors import DRIVER_ERRORS
from pgq_sa._notifications import Message
from pgq_sa._ops import schedules as scheduling
from pgq_sa._ops import settings, workflows
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import Operation
from pgq_sa._worker.core import HANDOVER_SECONDS, Reservation, WorkerCore
from pgq_sa._worker.effects import (
    Call,
    Lane,
    ListenClose,
    ListenConnect,
    ListenPing,
    ListenWait,
    Service,
    Shutdown,
    ShutdownStep,
    Signal,
    Wait,
)
from pgq_sa._worker.problems import brief

log = logging.getLogger("pgq_sa.worker")

T = TypeVar("T")

# What a failed database call raises, whatever the driver: SQLAlchemy's wrapper, psycopg's own
# errors (the LISTEN connection), socket errors (a refused or reset connection) and our client-
# side statement deadline (a TimeoutError). All of them are retried; nothing else is.
# asyncpg's own errors too: SQLAlchemy 2.0 lets some escape unwrapped (a refused connect).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    DBAPIError,
    psycopg.Error,
    OSError,
    *DRIVER_ERRORS,
)
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
LISTEN_WAIT = 0.5  # the longest the listener waits before looking at the stop flags again
# Silent for this long, the LISTEN connection is asked for an answer: a peer that vanished is
# found out within this plus statement_timeout, keepalives or not.
LISTEN_PING_EVERY = 5.0
PRUNE_BATCH = 1000
# Maintenance rounds between two passes of the workflow straggler sweep.
SETTLE_EVERY = 6
MAX_PRUNE_ROUNDS = 10


def retrying(
    core: WorkerCore,
    what: str,
    operation: Callable[[], Operation[T]],
    lane: Lane = Lane.POOL,
    fetcher: int = 0,
    *,
    give_up: Signal = Signal.CLOSING,
    deadline: Callable[[], float | None] = lambda: None,
) -> Service[T | None]:
    """Run one operation, retrying with backoff while the database is unreachable; None when
    the worker gave up (``give_up`` was set, it is closing, or it was forced to stop).
    ``deadline`` gives each attempt's deadline (None: the worker's statement_timeout)."""
    for attempt in range(10**9):
        try:
            result = yield Call(operation(), lane, fetcher, deadline())
        except DATABASE_ERRORS as error:
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            fatal = core.fatal(error)
            if fatal is not None:
                raise fatal from error
            core.failed(what, error, delay)
            stopped = yield Wait(give_up, delay)
            if stopped or core.closing or core.force:
                return None
            continue
        core.reached = True
        core.problems.recovered(what)
        return result  # type: ignore[no-any-return]
    return None  # pragma: no cover


def once(core: WorkerCore, what: str, operation: Callable[[], Operation[T]]) -> Service[T | None]:
    """Run one operation once, within the final deadline (at shutdown): a failure is logged,
    not retried."""
    try:
        result = yield Call(operation(), deadline=core.final_deadline)
    except DATABASE_ERRORS as error:
        log.warning("%s at shutdown: %s (the rescue recovers any held jobs)", what, brief(error))
        return None
    return result  # type: ignore[no-any-return]


# --- registering ---------------------------------------------------------------------------------


def register(core: WorkerCore) -> Service[bool]:
    """Insert the worker's row and its tasks' limits; False if it stopped before it could."""
    options, statements = core.options, core.statements

    def row() -> Operation[bool]:
        return protocol.register(
            statements,
            core.identity,
            options.task_names,
            options.queues,
            options.capacity,
            options.heartbeat_interval,
            options.lease_timeout,
        )

    definitions = list(options.tasks.values())
    if (yield from retrying(core, "register", row, give_up=Signal.STOPPING)) is None:
        return False
    limits = partial(protocol.upsert_limits, statements, definitions)
    if (yield from retrying(core, "limits", limits, give_up=Signal.STOPPING)) is None:
        return False
    durability = partial(settings.read_durability, statements)
    level = yield from retrying(core, "durability", durability, give_up=Signal.STOPPING)
    if level is None:
        return False
    core.use_durability(level)
    core.mark_registered()
    return True


# --- fetchers ------------------------------------------------------------------------------------


def fetcher(core: WorkerCore, number: int) -> Service[None]:
    """One fetcher: reserve free handler slots, claim up to that many (writing the outcomes
    pending meanwhile in the same statement), hand the jobs to the runners, repeat.

    Several fetchers run at once (each on its own lanes) so that claims overlap and share commit
    flushes; the reservation keeps them from over-filling the slots. Only the leader (number 0)
    answers wake-ups; the others join while claims come back full (a backlog), so one NOTIFY
    costs one claim. A fetcher whose claims come back full is *hungry*: it claims again as soon
    as a slot frees, so the completer leaves pending outcomes to it.
    """
    leader = number == 0
    poll = core.options.poll_interval
    hungry = False
    try:
        while not core.stopping:
            reservation = core.reserve()
            if reservation is None:
                if not core.stopping:
                    waiting = Signal.SLOT_FREED if core.registered else Signal.REGISTERED
                    if waiting is Signal.SLOT_FREED:
                        # Left set by an earlier release, the event would end the wait at once:
                        # every fetcher would spin on the core until a slot frees.
                        core.runtime.clear(Signal.SLOT_FREED)
                    yield Wait(waiting, poll)
                continue
            if leader:
                core.runtime.clear(Signal.WAKE)
            claimed = yield from _claim(core, reservation, number)
            if claimed is None:  # gave up: stopping
                core.claim_refused(reservation)
                return
            result = core.record_claim(reservation, claimed)
            if result.failed:
                yield from _return_strays(core)
            hungry = core.set_hungry(hungry, result.full)
            if result.full:
                continue
            if not leader:
                yield Wait(Signal.BACKLOG, poll)
            elif core.drained(reservation, len(claimed)):
                log.info("no due job left: stopping (until_empty)")
                core.begin_stop()
            else:
                yield Wait(Signal.WAKE, poll)
    finally:
        core.set_hungry(hungry, False)


def _claim(
    core: WorkerCore, reservation: Reservation, number: int
) -> Service[list[protocol.Claimed] | None]:
    """Claim up to the reservation's limit: with its pending outcomes in one statement, or the
    limited tasks under their limit rows first, then the others. None when it gave up."""
    options, statements = core.options, core.statements
    limit, batch = reservation.limit, reservation.piggyback
    if batch is not None:
        operation = protocol.finish_and_claim(
            statements,
            core.worker_id,
            batch,
            options.free_tasks,
            options.queues,
            limit,
            plain=core.plain(batch),
        )
        try:
            answer: tuple[protocol.Finished, protocol.Claims] = yield Call(
                operation, Lane.CLAIM, number
            )
            finished, claims = answer
        except DATABASE_ERRORS as error:
            # Tried once: the outcomes go back to the completer (a row locked elsewhere must not
            # hold every claim behind it), and the claim is retried without them.
            core.failed("claim", error, 0.0)
            core.outcomes_back(reservation)
            if core.stopping:  # the stop cut it: no claim without them either
                return None
        else:
            core.reached = True
            core.problems.recovered("claim")
            core.written(batch, finished)
            reservation.piggyback = None  # written: let the outcomes go now
            core.claim_answered(claims.alive)
            return claims.jobs
    claimed: list[protocol.Claimed] = []
    if options.limited_tasks:
        limited = yield from retrying(
            core,
            "claim",
            lambda: protocol.claim_limited(
                statements, core.worker_id, options.limited_tasks, options.queues, limit
            ),
            Lane.LIMITED,
            number,
            give_up=Signal.STOPPING,
        )
        if limited is None:
            return None
        core.claim_answered(limited.alive)
        claimed.extend(limited.jobs)
        if limited.jobs and options.pacing:
            core.runtime.call_later(options.pacing, Signal.WAKE)
    if options.free_tasks and len(claimed) < limit:
        free = yield from retrying(
            core,
            "claim",
            lambda: protocol.claim(
                statements, core.worker_id, options.free_tasks, options.queues, limit - len(claimed)
            ),
            Lane.CLAIM,
            number,
            give_up=Signal.STOPPING,
        )
        if free is None:
            return claimed or None
        core.claim_answered(free.alive)
        claimed.extend(free.jobs)
    return claimed


def _return_strays(core: WorkerCore) -> Service[None]:
    """After a failed claim: it may have committed though its answer was lost. Once no other
    fetcher is between a claim and recording its jobs, hand back what nobody here knows of."""
    while core.claiming and not core.closing:
        yield Wait(Signal.CLOSING, 0.05)
    keep = core.held_ids()
    yield from retrying(  # once stopping, the final hand-back does it
        core,
        "hand back",
        lambda: protocol.hand_back(core.statements, core.worker_id, keep),
        give_up=Signal.STOPPING,
    )


# --- completer -----------------------------------------------------------------------------------


def completer(core: WorkerCore) -> Service[None]:
    """Write the outcomes no fetcher takes along: while some fetcher is hungry and keeps taking
    them, leave them; otherwise (idle queue, stopping) write them at once."""
    while True:
        if not core.pending:
            if core.completer_closing:
                return
            core.runtime.clear(Signal.OUTCOME_READY)
            yield Wait(Signal.OUTCOME_READY, core.options.poll_interval)
            continue
        if core.completer_defers():
            taken = core.taken
            core.runtime.clear(Signal.HANDOVER)
            yield Wait(Signal.HANDOVER, HANDOVER_SECONDS)
            if core.taken != taken or not core.pending:
                continue  # the fetchers are taking them
        batch = core.take_batch()
        finished = yield from retrying(
            core,
            "finish",
            lambda batch=batch: protocol.finish(  # type: ignore[misc]
                core.statements, core.worker_id, batch, plain=core.plain(batch)
            ),
            Lane.FINISH,
            give_up=Signal.FINAL,
            deadline=lambda: core.final_deadline if core.completer_closing else None,
        )
        core.written(batch, finished)


# --- heartbeat, maintenance, scheduler -----------------------------------------------------------


def heartbeat(core: WorkerCore) -> Service[None]:
    """Refresh the worker's row every ``heartbeat_interval`` (at once when a claim found it
    dead), learn which running jobs to cancel, and register again when the row is gone."""
    while True:
        yield Wait(Signal.BEAT_NOW, core.options.heartbeat_interval)
        core.runtime.clear(Signal.BEAT_NOW)
        if core.closing:
            return
        beat = yield from retrying(
            core,
            "heartbeat",
            lambda: protocol.heartbeat(core.statements, core.worker_id),
            Lane.HEARTBEAT,
        )
        if beat is None or core.closing:
            return  # closing: the row is gone because this worker deregistered
        if not beat.alive:
            log.warning(
                "worker %s was declared dead (its row is gone; its jobs were rescued): "
                "registering again as a new incarnation",
                core.identity.name,
            )
            core.registered = False
            core.reincarnate()
            yield from register(core)
        elif not core.registered:
            core.mark_registered()  # a late heartbeat: the row lives, its lease is fresh again
        core.cancel(beat.cancel)


def maintenance(core: WorkerCore) -> Service[None]:
    """Rescue the jobs of silent workers and prune old finished jobs, on every worker; and now
    and then settle workflow steps left waiting after their dependencies finished (their parents
    finished by a worker of a previous release during a rolling upgrade)."""
    queue, options = core.queue, core.options
    cursor = (0, 0)
    for round_ in itertools.count():
        if (yield Wait(Signal.CLOSING, options.heartbeat_interval)):
            return
        yield from retrying(
            core,
            "rescue",
            lambda: protocol.rescue(
                queue.statements, core.worker_id, options.lease_timeout, queue.events
            ),
        )
        for _ in range(MAX_PRUNE_ROUNDS):
            removed = yield from retrying(
                core,
                "prune",
                partial(
                    protocol.prune,
                    queue.statements,
                    queue.keep_succeeded,
                    queue.keep_failed,
                    PRUNE_BATCH,
                ),
            )
            if not removed or removed < PRUNE_BATCH:
                break
        if round_ % SETTLE_EVERY == 0:
            settled = yield from retrying(
                core,
                "settle",
                lambda cursor=cursor: workflows.settle_stragglers(  # type: ignore[misc]
                    queue.statements, cursor
                ),
            )
            if settled is not None:
                cursor = settled.cursor


def scheduler(core: WorkerCore) -> Service[None]:
    """Enqueue each due fire time of the queue's cron schedules (once, cluster-wide), until the
    worker stops."""
    statements, options = core.statements, core.options
    state = scheduling.SchedulerState(core.queue.schedules, options.tasks)

    def upsert() -> Operation[bool]:
        return scheduling.upsert(statements, state, scheduling.now_utc())

    def fire() -> Operation[int]:
        return scheduling.fire_due(statements, state, scheduling.now_utc())

    if (yield from retrying(core, "schedules", upsert, give_up=Signal.STOPPING)) is None:
        return
    touched = time.monotonic()
    while not core.stopping:
        if time.monotonic() - touched >= options.heartbeat_interval:
            yield from retrying(core, "schedules", partial(scheduling.touch, statements, state))
            touched = time.monotonic()
        yield from retrying(core, "fire", fire, give_up=Signal.STOPPING)
        yield Wait(Signal.STOPPING, state.next_wake(scheduling.now_utc()))


# --- listener ------------------------------------------------------------------------------------


def listener(core: WorkerCore) -> Service[None]:
    """Turn notifications into wake-ups and cancellations; after every (re)connection, assume
    anything may have happened while away: wake the fetchers and look up the next due job."""
    task_names = core.options.task_names
    connected = False
    failures = 0
    heard = time.monotonic()
    while not core.closing:
        try:
            if not connected:
                yield ListenConnect()
                connected = True
                core.problems.recovered("listener")
                failures = 0
                core.runtime.set(Signal.WAKE)
                due = yield from retrying(
                    core, "next run", partial(protocol.next_run_at, core.statements, task_names)
                )
                if due is not None:
                    core.wake_at(due)
            messages: list[Message] = yield ListenWait(LISTEN_WAIT)
            if messages:
                heard = time.monotonic()
            elif time.monotonic() - heard >= LISTEN_PING_EVERY:
                yield ListenPing(core.options.statement_timeout)  # still there?
                heard = time.monotonic()
            for message in messages:
                if message.reason == "cancel" and message.job_id is not None:
                    core.cancel([message.job_id])
                elif message.concerns(task_names):
                    core.wake_at(message.run_at if message.run_at is not None else 0.0)
        except DATABASE_ERRORS as error:
            connected = False
            yield ListenClose()
            delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            failures += 1
            core.problems.failed("listener", error, delay, "wake-ups fall back to polling")
            yield Wait(Signal.CLOSING, delay)
    yield ListenClose()


# --- shutdown ------------------------------------------------------------------------------------


def shutdown(core: WorkerCore) -> Service[None]:
    """Stop: no more claims; running jobs get ``shutdown_timeout`` to finish (none when forced);
    then what still runs is interrupted, the outcomes are written, and the jobs still held are
    handed back (their attempt not counted) before the worker's row is removed."""
    core.begin_stop()
    deadline = time.monotonic() + core.options.shutdown_timeout
    while core.busy > 0 and not core.force and (left := deadline - time.monotonic()) > 0:
        core.runtime.clear(Signal.SLOT_FREED)
        yield Wait(Signal.SLOT_FREED, min(left, 0.05))
    core.interrupt_unfinished()
    yield Shutdown(ShutdownStep.STOP_RUNNERS)
    core.close_completer()
    yield Shutdown(ShutdownStep.JOIN_COMPLETER)
    core.close()
    yield Shutdown(ShutdownStep.JOIN_SERVICES)  # nothing uses the lanes any more
    yield Shutdown(ShutdownStep.CLOSE_LANES)
    statements, worker_id = core.statements, core.worker_id
    handed_back = yield from once(
        core, "hand back", lambda: protocol.hand_back(statements, worker_id)
    )
    if handed_back:
        log.info("handed %d unfinished jobs back to the queue", handed_back)
    yield from once(core, "deregister", lambda: protocol.deregister(statements, worker_id))
    log.info("worker %s stopped", core.identity.name)


def background(core: WorkerCore) -> list[tuple[str, Callable[[WorkerCore], Service[None]]]]:
    """The services every worker runs beside its fetchers and runners."""
    services: list[tuple[str, Callable[[WorkerCore], Service[None]]]] = [
        ("completer", completer),
        ("heartbeat", heartbeat),
        ("listener", listener),
        ("maintenance", maintenance),
    ]
    if core.queue.schedules:
        services.append(("scheduler", scheduler))
    return services


def advance(service: Service[Any], sent: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Resume ``service`` with ``sent`` (or throw ``error`` into it): ``(False, effect)`` for
    its next effect, ``(True, value)`` once it returned ``value``."""
    try:
        effect = service.throw(error) if error is not None else service.send(sent)
    except StopIteration as done:
        return True, done.value
    return False, effect
