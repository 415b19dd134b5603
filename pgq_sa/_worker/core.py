"""The worker's state and every decision both workers make, with no I/O and no waiting.

:class:`WorkerCore` keeps the accounting of one worker: handler slots reserved by fetchers or
held by running jobs (``busy``), jobs claimed and not yet written (``unwritten``, ``held``),
finished outcomes waiting to be written (``pending``), which fetchers are *hungry* (their last
claim came back full, so they claim again at once and take pending outcomes along), and the
stop flags. Its methods are the decisions: how many jobs the next claim may take, which claim
to run (finish-and-claim, limited, free), what a claim or a write wakes, when ``until_empty`` is
satisfied, what a stop hands back. The services (:mod:`.services`) call them between effects;
the drivers serialise those calls (the thread driver under one lock, the anyio driver on its
event loop) and tell the core about signals and timers through :class:`Runtime`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pgq_sa._decisions import Outcome
from pgq_sa._job import Job
from pgq_sa._ops.worker import Claimed, Finished, Identity
from pgq_sa._queue import Queue
from pgq_sa._sql import Statements
from pgq_sa._tasks import TaskDefinition
from pgq_sa._worker.effects import Signal
from pgq_sa._worker.options import WorkerOptions
from pgq_sa._worker.problems import Problems

log = logging.getLogger("pgq_sa.worker")

MAX_FINISH_BATCH = 1000
# How long the completer leaves pending outcomes to fetchers that keep claiming (they write them
# with their next claim) before it writes them itself, when no fetcher took any meanwhile.
HANDOVER_SECONDS = 0.05
# A fetcher's claims run on lanes of their own; at most this many fetchers claim at once.
MAX_FETCHERS = 8
# The deadline of the statements a stopping worker sends last (final writes, hand-back,
# deregister): a dead database delays a stop by seconds, not by statement_timeouts.
FINAL_DEADLINE = 2.0


class Runtime(Protocol):
    """What the core needs from its driver, all non-blocking."""

    def set(self, signal: Signal) -> None: ...

    def clear(self, signal: Signal) -> None: ...

    def call_later(self, delay: float, signal: Signal) -> None:
        """Set ``signal`` after ``delay`` seconds."""

    def dispatch(self, items: list[Claimed]) -> None:
        """Hand claimed jobs to the handler runners."""

    def interrupt(self, job: Job) -> None:
        """Stop a running ``async def`` handler of ``job`` now (its cancellation was asked)."""


@dataclass(slots=True)
class Reservation:
    """Handler slots a fetcher reserved for one claim, and what it knew when it did."""

    limit: int
    writes_before: int
    failures_before: int
    piggyback: list[Outcome] | None  # pending outcomes written by this claim, if any


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What a claim's answer means for the fetcher that ran it."""

    full: bool  # as many jobs as reserved: claim again at once
    failed: bool  # some claim failed meanwhile: its answer may be lost (return strays)


def attempt_key(job_id: int, attempt: int) -> int:
    """One attempt of one job as a single int (the attempt in the low 32 bits: the column is a
    32-bit integer). The core keys what it holds and runs by attempt; an int is not tracked by
    the garbage collector, where a tuple per job in flight made it collect twice as often."""
    return job_id << 32 | attempt


def timeout_of(item: Claimed, definition: TaskDefinition) -> float | None:
    """How long a claimed job may run: its own timeout, else its task's (None: no limit)."""
    return item.timeout or definition.timeout


def job_id_of(key: int) -> int:
    """The job id of an :func:`attempt_key`."""
    return key >> 32


def fetcher_count(options: WorkerOptions) -> int:
    """How many fetchers claim at once: enough to fill the handler slots a batch at a time
    (overlapping claims share commit flushes), at most ``MAX_FETCHERS``."""
    return max(1, min(MAX_FETCHERS, -(-options.capacity // options.batch_size)))


@dataclass(eq=False)
class WorkerCore:
    """One worker's state and decisions (see the module docstring)."""

    queue: Queue
    options: WorkerOptions
    identity: Identity
    runtime: Runtime
    until_empty: bool = False
    # Outcomes ride on the next claim unless limited tasks need their own claim transaction.
    piggyback: bool = False
    busy: int = 0
    unwritten: int = 0
    writes: int = 0
    claiming: int = 0  # fetchers between a claim and recording its jobs in ``held``
    failures: int = 0  # failed database calls, ever
    taken: int = 0  # outcomes fetchers took along with a claim, ever
    hungry: int = 0  # fetchers whose last claim came back full
    processed: int = 0
    stopping: bool = False
    closing: bool = False
    force: bool = False
    completer_closing: bool = False
    registered: bool = False
    reached: bool = False  # some database call succeeded
    # A claim carrying outcomes failed: claims go without them until the completer has written
    # (a row locked elsewhere must not hold every claim behind it).
    piggyback_paused: bool = False
    durability: str = "durable"
    # Keyed by attempt (attempt_key): after a rescue, one worker may run an old attempt of a job
    # (its lease lost) beside the new one it claimed again.
    running: dict[int, Job] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)  # claimed, not written or dropped
    steps: set[int] = field(default_factory=set)  # the held jobs in workflows
    pending: list[Outcome] = field(default_factory=list)
    problems: Problems = field(default_factory=Problems)
    clock: Callable[[], float] = time.time
    # Turns a database error into the configuration problem it reveals, if it is one.
    explain: Callable[[BaseException], BaseException | None] = lambda error: None

    def __post_init__(self) -> None:
        self.piggyback = bool(self.options.free_tasks) and not self.options.limited_tasks

    @property
    def statements(self) -> Statements:
        return self.queue.statements

    @property
    def worker_id(self) -> uuid.UUID:
        return self.identity.id

    # --- claiming ------------------------------------------------------------------------------

    def reserve(self) -> Reservation | None:
        """Reserve the free handler slots for one claim (at most a batch), or None when every
        slot is taken or the worker is stopping. Pending outcomes ride along when they can."""
        if self.stopping or not self.registered:
            return None
        free = self.options.capacity - self.busy
        if free <= 0:
            return None
        limit = min(free, self.options.batch_size)
        self.busy += limit
        self.claiming += 1
        piggyback = None
        if self.piggyback and not self.piggyback_paused and self.pending:
            piggyback = self.pending[:MAX_FINISH_BATCH]
            del self.pending[:MAX_FINISH_BATCH]
            # Counted, not signalled: the completer, leaving outcomes to hungry fetchers, looks
            # at ``taken`` when its HANDOVER wait ends (a wake-up per claim cost the worker more
            # CPU than the rest of its claim cycle's bookkeeping).
            self.taken += len(piggyback)
        return Reservation(limit, self.writes, self.failures, piggyback)

    def claim_refused(self, reservation: Reservation) -> None:
        """A claim gave up (the worker is stopping): free its slots, keep its outcomes."""
        self.record_claim(reservation, [])
        self.outcomes_back(reservation)

    def outcomes_back(self, reservation: Reservation) -> None:
        """Outcomes a claim took along and could not write go back to the completer (once), and
        claims stop taking outcomes along until it has written some."""
        if not reservation.piggyback:
            return
        self.pending[:0] = reservation.piggyback
        reservation.piggyback = None
        self.piggyback_paused = True
        self.runtime.set(Signal.OUTCOME_READY)

    @property
    def final_deadline(self) -> float:
        return min(self.options.statement_timeout, FINAL_DEADLINE)

    def record_claim(self, reservation: Reservation, claimed: list[Claimed]) -> ClaimResult:
        """Account for a claim's jobs and hand them to the runners."""
        self.claiming -= 1
        self.busy -= reservation.limit - len(claimed)
        self.unwritten += len(claimed)
        for item in claimed:
            key = attempt_key(item.job.id, item.job.attempt)
            self.running[key] = item.job
            self.held.add(key)
            if item.job.workflow_id is not None:
                self.steps.add(key)
        if claimed:
            self.runtime.dispatch(claimed)
        if len(claimed) < reservation.limit:
            self.runtime.set(Signal.SLOT_FREED)
        full = len(claimed) == reservation.limit
        if full:
            self.runtime.set(Signal.BACKLOG)
        else:
            self.runtime.clear(Signal.BACKLOG)
        return ClaimResult(full, self.failures != reservation.failures_before)

    def set_hungry(self, was: bool, now: bool) -> bool:
        """A fetcher's hunger changed from ``was`` to ``now``: the completer leaves pending
        outcomes to hungry fetchers and is told when one stops being hungry."""
        if was != now:
            self.hungry += 1 if now else -1
            if not now:
                self.runtime.set(Signal.HANDOVER)
        return now

    def drained(self, reservation: Reservation, claimed: int) -> bool:
        """``until_empty``: the claim found nothing, nothing runs or waits to be written, and no
        write happened since the claim began (a write may have queued a retry that is due). A
        claim that found the worker's row dead claimed nothing whatever is queued: it proves
        nothing until the worker has registered again and claimed."""
        return (
            self.until_empty
            and self.registered
            and claimed == 0
            and self.busy == 0
            and self.unwritten == 0
            and self.writes == reservation.writes_before
        )

    def claim_answered(self, alive: bool) -> None:
        """A claim said whether the worker's row is alive; a dead one stops the claims until the
        heartbeat registers the worker again."""
        if not alive and self.registered:
            log.warning(
                "worker %s: its row is gone or its lease expired; registering again before "
                "claiming",
                self.identity.name,
            )
            self.registered = False
            self.runtime.clear(Signal.REGISTERED)
            self.runtime.set(Signal.BEAT_NOW)

    def reincarnate(self) -> None:
        """The worker was declared dead: it comes back under a new id. Jobs it held under the
        old one were rescued (their late outcomes will be refused as lease lost)."""
        self.identity = self.identity.next()
        self.held.clear()

    def held_ids(self) -> list[int]:
        """The ids of the jobs this worker knows it holds (what a stray hand-back keeps)."""
        return sorted({job_id_of(key) for key in self.held})

    def use_durability(self, level: str) -> None:
        """The schema's durability level, read at start. ``balanced``: claims and heartbeats
        commit without waiting for the WAL flush, and finishes stay durable, so outcomes no
        longer ride along with claims (the completer writes them on its own lane)."""
        self.durability = level
        if level == "balanced":
            self.piggyback = False

    def mark_registered(self) -> None:
        self.registered = True
        self.runtime.set(Signal.REGISTERED)
        self.runtime.set(Signal.WAKE)

    # --- running -------------------------------------------------------------------------------

    def start(self, item: Claimed) -> TaskDefinition | None:
        """A runner is about to run ``item``: its task, or None when the worker is stopping (the
        job stays claimed and is handed back at shutdown). Its timeout is :func:`timeout_of`.
        (No tuple of both: one object fewer per job for the garbage collector to track.)"""
        if self.stopping:
            self.release(item.job, None)
            return None
        definition = self.options.tasks[item.job.task]
        if item.cancel_requested:
            item.job.request_cancel("cancel")
        return definition

    def release(self, job: Job, outcome: Outcome | None) -> None:
        """A runner is done with ``job``: its outcome waits to be written; None (not started,
        or interrupted by the shutdown) leaves the job to the hand-back.

        Runs once per job, so it signals only what someone may wait for: the completer waits
        for OUTCOME_READY only once it found nothing pending (the first outcome wakes it), and
        fetchers wait for SLOT_FREED only when every slot was taken (the first slot freed wakes
        them); a stopping worker waits for each slot."""
        key = attempt_key(job.id, job.attempt)
        self.running.pop(key, None)
        full = self.busy >= self.options.capacity
        self.busy -= 1
        if outcome is None or job.cancel_reason == "shutdown":
            self.unwritten -= 1
            self.held.discard(key)
            self.steps.discard(key)
        else:
            if not self.pending:
                self.runtime.set(Signal.OUTCOME_READY)
            self.pending.append(outcome)
        if full or self.stopping:
            self.runtime.set(Signal.SLOT_FREED)

    def cancel(self, job_ids: Iterable[int]) -> None:
        """Cancellation was requested for these jobs: stop the ones running here."""
        wanted = set(job_ids)
        for job in [job for key, job in self.running.items() if job_id_of(key) in wanted]:
            if not job.cancelled:
                log.info("job %s: cancellation requested", job.id)
                job.request_cancel("cancel")
                self.runtime.interrupt(job)

    # --- writing outcomes ----------------------------------------------------------------------

    def completer_defers(self) -> bool:
        """Should the completer leave the pending outcomes to a hungry fetcher for a moment?"""
        return self.piggyback and self.hungry > 0 and not self.stopping

    def plain(self, batch: list[Outcome]) -> bool:
        """Are these outcomes all of jobs outside any workflow? Then their finish need not
        settle workflow dependents (a cheaper statement)."""
        steps = self.steps
        return not steps or not any(attempt_key(o.job_id, o.attempt) in steps for o in batch)

    def take_batch(self) -> list[Outcome]:
        batch = self.pending[:MAX_FINISH_BATCH]
        del self.pending[:MAX_FINISH_BATCH]
        return batch

    def written(self, batch: list[Outcome], finished: Finished | None) -> None:
        """Account for a batch of outcomes the database has (or, closing, never will have), and
        wake what the write may concern."""
        self.unwritten -= len(batch)
        keys = [attempt_key(outcome.job_id, outcome.attempt) for outcome in batch]
        self.held.difference_update(keys)
        if self.steps:
            self.steps.difference_update(keys)
        self.writes += 1
        if finished is not None:
            self.piggyback_paused = False
        self.processed += len(batch)
        self.runtime.set(Signal.SLOT_FREED)
        if self.until_empty or self.options.limited_tasks:
            # until_empty re-checks after every write; a limited task's slot may have freed
            self.runtime.set(Signal.WAKE)
        if finished is not None and finished.next_run_at is not None:
            self.wake_at(finished.next_run_at.timestamp())

    def wake_at(self, when: float) -> None:
        """Wake the leading fetcher at epoch time ``when`` (a delayed job or a retry is due)."""
        delay = when - self.clock()
        if delay <= 0.001:
            self.runtime.set(Signal.WAKE)
        else:
            self.runtime.call_later(delay, Signal.WAKE)

    # --- stopping ------------------------------------------------------------------------------

    def begin_stop(self, *, force: bool = False) -> None:
        """Stop claiming (idempotent); ``force``: do not wait for running jobs."""
        self.force = self.force or force
        if self.stopping:
            return
        self.stopping = True
        for signal in (
            Signal.STOPPING,
            Signal.WAKE,
            Signal.BACKLOG,
            Signal.SLOT_FREED,
            Signal.HANDOVER,
            Signal.REGISTERED,
        ):
            self.runtime.set(signal)

    def interrupt_unfinished(self) -> list[Job]:
        """The grace period is over: ask every job still running to stop ("shutdown": its
        outcome is not recorded; the hand-back requeues it)."""
        unfinished = list(self.running.values())
        for job in unfinished:
            job.request_cancel("shutdown")
            self.runtime.interrupt(job)
        return unfinished

    def close_completer(self) -> None:
        """The completer writes what is pending and ends; a write that fails now is not retried
        (the hand-back or the rescue recovers those jobs), so a dead database cannot hold up
        the shutdown."""
        self.completer_closing = True
        self.runtime.set(Signal.OUTCOME_READY)
        self.runtime.set(Signal.FINAL)

    def close(self) -> None:
        self.closing = True
        self.runtime.set(Signal.CLOSING)
        self.runtime.set(Signal.BEAT_NOW)  # the heartbeat sees it at once

    # --- problems ------------------------------------------------------------------------------

    def fatal(self, error: BaseException) -> BaseException | None:
        """The error to end the run with, instead of retrying: only for ``until_empty`` runs
        that never reached the database, and only for configuration problems (a missing schema
        or database, refused credentials, nothing listening): there is nothing to wait for. A
        worker that reached its database once waits for it to come back."""
        if not self.until_empty or self.reached:
            return None
        return self.explain(error)

    def failed(self, what: str, error: BaseException, retry_in: float) -> None:
        """A database call of ``what`` ("claim", "heartbeat", ...) failed: told once per distinct
        problem. A claim that fails once the worker is stopping is none: the stop cuts claims in
        flight (their jobs are handed back), so it is noted at DEBUG only."""
        self.failures += 1
        if self.stopping and what == "claim":
            log.debug("a claim in flight ended with the stop (%s)", error)
            return
        self.problems.failed(what, error, retry_in, self.hint(error))

    def hint(self, error: BaseException) -> str:
        """How to fix ``error`` when it is a configuration problem, for the warning."""
        explained = self.explain(error)
        return str(explained) if explained is not None else ""
