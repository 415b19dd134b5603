"""``ThreadWorker``: a blocking worker for sync programs, built from plain threads.

The calling thread fetches (claims up to the free handler slots, then waits for a NOTIFY or the
poll interval); ``threads`` handler threads run jobs; a completer writes finished outcomes in
batches; a heartbeater keeps the worker's row fresh and learns about cancellations; a listener
turns NOTIFY into wake-ups. Finished outcomes ride on the fetchers' next claim (one statement,
``finish_and_claim``) while claims keep coming back full; the completer writes them otherwise.
``async def`` handlers run on one event loop thread of the worker's own. Every statement is one
of :mod:`pgq_sa._sql`, driven through :mod:`.protocol`.
"""

from __future__ import annotations

import contextlib
import logging
import queue as queues_module
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

import psycopg
from anyio.from_thread import BlockingPortal, start_blocking_portal
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from pgq_sa._config import make_engine
from pgq_sa._decisions import Outcome
from pgq_sa._job import Job
from pgq_sa._ops import schedules as scheduler
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import Operation
from pgq_sa._ops.schedules import now_utc
from pgq_sa._ops.worker import Claimed, Identity
from pgq_sa._queue import Queue
from pgq_sa._schema import notify_channel
from pgq_sa._worker import transactional
from pgq_sa._worker.handlers import run_async_handler
from pgq_sa._worker.lanes import (
    CLAIM_SESSION,
    FINISH_SESSION,
    FetchLanes,
    SyncDatabase,
    SyncLane,
    fetcher_count,
)
from pgq_sa._worker.listener import ListenConnection
from pgq_sa._worker.options import worker_options
from pgq_sa._worker.timers import TimerThread

log = logging.getLogger("pgq_sa.worker")

T = TypeVar("T")

_MAX_FINISH_BATCH = 1000
PRUNE_BATCH = 1000
MAX_PRUNE_ROUNDS = 10
_RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
# How long the completer leaves pending outcomes to fetchers that keep claiming (they write them
# with their next claim) before it writes them itself, when no fetcher took any meanwhile.
HANDOVER_SECONDS = 0.05


def sync_engine(bind: Engine | str | URL) -> tuple[Engine, bool]:
    """The engine to use, and whether the worker owns (and so disposes) it."""
    if isinstance(bind, Engine):
        return bind, False
    if isinstance(bind, (str, URL)):
        return make_engine(bind), True
    raise TypeError(f"bind must be a sync Engine or a database URL, got {type(bind).__name__}")


class ThreadWorker:
    """Run the queue's jobs on ``threads`` threads until stopped (SIGINT/SIGTERM or ``stop()``)."""

    kind = "threads"

    def __init__(
        self,
        queue: Queue,
        bind: Engine | str | URL,
        *,
        threads: int = 8,
        batch_size: int | None = None,
        queues: Iterable[str] | None = None,
        heartbeat_interval: float = 5.0,
        lease_timeout: float = 30.0,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        name: str | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.options = worker_options(
            queue,
            capacity=threads,
            capacity_name="threads",
            batch_size=batch_size,
            queues=queues,
            heartbeat_interval=heartbeat_interval,
            lease_timeout=lease_timeout,
            poll_interval=poll_interval,
            shutdown_timeout=shutdown_timeout,
        )
        transactional.refuse_async(self.options, "ThreadWorker")
        self.queue = queue
        self._engine, self._owns_engine = sync_engine(bind)
        self.identity = Identity.new(self.kind, name)
        # False when the host (a web server) owns SIGINT/SIGTERM and calls stop() itself.
        self._handle_signals = handle_signals
        self._register = partial(
            protocol.register,
            queue.statements,
            self.identity,
            self.options.task_names,
            self.options.queues,
            self.options.capacity,
        )
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._backlog = threading.Event()
        self._until_empty = False
        self._lock = threading.Condition()
        self._busy = 0
        self._unwritten = 0
        self._writes = 0
        self._running: dict[int, Job] = {}
        self._held: set[int] = set()  # claimed and not yet written (or dropped)
        self._claiming = 0  # fetchers between a claim and recording its jobs in _held
        self._failures = 0
        self._work: queues_module.SimpleQueue[Claimed | None] = queues_module.SimpleQueue()
        self._pending: list[Outcome] = []  # finished attempts not yet written (under _lock)
        self._taken = 0  # outcomes fetchers took along with a claim, ever
        self._hungry = 0  # fetchers whose last claim came back full (they claim again at once)
        self._completer_closing = False
        # Outcomes ride on the next claim unless limited tasks need their own claim transaction.
        self._piggyback = bool(self.options.free_tasks) and not self.options.limited_tasks
        self._portal: BlockingPortal | None = None
        self._timers = TimerThread()
        self._db = SyncDatabase(self._engine)
        self._fetch_lanes = [
            FetchLanes(
                self._db.lane(CLAIM_SESSION), self._db.lane(CLAIM_SESSION, transactional=True)
            )
            for _ in range(fetcher_count(self.options))
        ]
        self._finish_lane = self._db.lane(FINISH_SESSION)
        self._jobs = transactional.SyncJobs.for_engine(
            self._engine, self.options, queue.statements, self.identity.id
        )
        self.processed = 0

    @property
    def id(self) -> uuid.UUID:
        return self.identity.id

    def stop(self) -> None:
        """Stop claiming, let running jobs finish (within ``shutdown_timeout``); any thread."""
        self._stopping.set()
        self._wake.set()
        self._backlog.set()
        with self._lock:
            self._lock.notify_all()

    # --- running -------------------------------------------------------------------------------

    def run(self, *, until_empty: bool = False) -> None:
        """Work until stopped; with ``until_empty`` return once nothing due is left."""
        statements = self.queue.statements
        options = self.options
        handlers: list[threading.Thread] = []
        fetchers: list[threading.Thread] = []
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(self._signals())
                if any(d.is_async for d in options.tasks.values()):
                    self._portal = stack.enter_context(start_blocking_portal("asyncio"))
                if not self._call(
                    "register",
                    self._register,
                    give_up=self._stopping,  # a signal while the database is unreachable ends it
                ) or not self._call(
                    "limits",
                    partial(protocol.upsert_limits, statements, list(options.tasks.values())),
                    give_up=self._stopping,
                ):
                    return
                self._timers.start()
                for number in range(options.capacity):
                    handlers.append(self._start(self._handle_jobs, f"handler-{number}"))
                completer = self._start(self._complete, "completer")
                heartbeater = self._start(self._heartbeat, "heartbeat")
                listener = self._start(self._listen, "listener")
                maintenance = self._start(self._maintain, "maintenance")
                if self.queue.schedules:
                    fetchers.append(self._start(self._schedule, "scheduler"))
                log.info(
                    "worker %s started: %d threads, tasks %s",
                    self.identity.name,
                    options.capacity,
                    ", ".join(options.task_names),
                )
                self._until_empty = until_empty
                for lanes in self._fetch_lanes[1:]:
                    follower = partial(self._fetch, until_empty, lanes, False)
                    fetchers.append(self._start(follower, "fetcher"))
                try:
                    self._fetch(until_empty, self._fetch_lanes[0])
                finally:
                    self.stop()
                    for fetcher in fetchers:  # they use the lanes closed below
                        fetcher.join()
                    self._shut_down(handlers, completer, heartbeater, listener)
                    maintenance.join()
        finally:  # also when it gave up before registering
            if self._owns_engine:
                self._engine.dispose()

    def _start(self, target: Callable[[], None], role: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"pgq_sa-{role}", daemon=True)
        thread.start()
        return thread

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: Any) -> None:
            if self._stopping.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                self._force.set()
            else:
                log.info("%s: finishing running jobs, then stopping", signal.Signals(signum).name)
            self.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _call(
        self,
        what: str,
        operation: Callable[[], Operation[T]],
        lane: SyncLane | None = None,
        give_up: threading.Event | None = None,
    ) -> T | None:
        """Run one operation, retrying with backoff while the database is unreachable.

        Gives up (returns None) when the worker is closing for good, or when ``give_up`` is set
        (claims stop retrying as soon as the worker is stopping).
        """
        give_up = give_up or self._closing
        run = lane.run if lane is not None else self._db.run
        for attempt in range(10**9):
            try:
                return run(operation())
            except (DBAPIError, psycopg.Error) as error:
                self._failures += 1
                delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)]
                log.warning("%s failed (%s); retrying in %.2fs", what, _brief(error), delay)
                if give_up.wait(delay) or self._closing.is_set() or self._force.is_set():
                    return None
        return None  # pragma: no cover

    # --- fetcher (the calling thread) ------------------------------------------------------------

    def _fetch(self, until_empty: bool, lanes: FetchLanes[SyncLane], leader: bool = True) -> None:
        """One fetcher: reserve free handler slots, claim up to that many (writing the outcomes
        pending meanwhile in the same statement), dispatch, repeat.

        Several fetchers run at once (each on its own connection) so that claims overlap and
        share commit flushes; a reservation keeps them from over-filling the handler slots. Only
        the leader answers wake-ups; the others join while claims come back full (a backlog), so
        one NOTIFY costs one claim. A fetcher whose claims come back full is *hungry*: it claims
        again as soon as a slot frees, so the completer leaves pending outcomes to it.
        """
        hungry = [False]
        try:
            self._fetch_rounds(until_empty, lanes, leader, hungry)
        finally:
            with self._lock:
                if hungry[0]:
                    self._hungry -= 1
                self._lock.notify_all()

    def _set_hungry(self, hungry: list[bool], value: bool) -> None:
        if hungry[0] != value:
            hungry[0] = value
            with self._lock:
                self._hungry += 1 if value else -1
                self._lock.notify_all()

    def _fetch_rounds(
        self, until_empty: bool, lanes: FetchLanes[SyncLane], leader: bool, hungry: list[bool]
    ) -> None:
        options = self.options
        while not self._stopping.is_set():
            with self._lock:
                while self._busy >= options.capacity and not self._stopping.is_set():
                    self._lock.wait(options.poll_interval)
                if self._stopping.is_set():
                    return
                limit = min(options.capacity - self._busy, options.batch_size)
                self._busy += limit  # reserved until the claim answers
                self._claiming += 1
                writes_before = self._writes
            if leader:
                self._wake.clear()
            failures = self._failures
            claimed = self._claim(limit, lanes) or []
            with self._lock:
                self._claiming -= 1
                self._busy -= limit - len(claimed)
                self._unwritten += len(claimed)
                for item in claimed:
                    self._running[item.job.id] = item.job
                    self._held.add(item.job.id)
                self._lock.notify_all()
            for item in claimed:
                self._work.put(item)
            if self._failures != failures:
                self._return_strays()
            if len(claimed) == limit:
                self._set_hungry(hungry, True)
                self._backlog.set()
                continue
            self._set_hungry(hungry, False)
            self._backlog.clear()
            if not leader:
                self._backlog.wait(options.poll_interval)
                continue
            if until_empty and not claimed:
                with self._lock:
                    idle = self._busy == 0 and self._unwritten == 0
                    settled = self._writes == writes_before
                if idle and settled:
                    log.info("no due job left: stopping (until_empty)")
                    self.stop()
                    return
            self._wake.wait(options.poll_interval)

    def _return_strays(self) -> None:
        """After a failed claim: a claim may have committed though its answer was lost.

        Waits until no other fetcher is between its claim and recording what it claimed, so
        that only jobs nobody knows about are handed back.
        """
        with self._lock:
            while self._claiming and not self._closing.is_set():
                self._lock.wait(0.05)
            keep = sorted(self._held)
        self._call(
            "hand back", partial(protocol.hand_back, self.queue.statements, self.identity.id, keep)
        )

    def _claim(self, limit: int, lanes: FetchLanes[SyncLane]) -> list[Claimed] | None:
        """Claim up to ``limit`` jobs: limited tasks under their limit rows, then the rest."""
        options, statements, worker_id = self.options, self.queue.statements, self.identity.id
        if self._piggyback and self._pending:
            return self._finish_and_claim(limit, lanes)
        claimed: list[Claimed] = []
        if options.limited_tasks:
            limited = self._call(
                "claim",
                partial(
                    protocol.claim_limited,
                    statements,
                    worker_id,
                    options.limited_tasks,
                    options.queues,
                    limit,
                ),
                lanes.limited,
                self._stopping,
            )
            if limited is None:
                return None
            claimed.extend(limited)
            if limited and options.pacing:
                self._timers.call_later(options.pacing, self._wake.set)
        if options.free_tasks and len(claimed) < limit:
            free = self._call(
                "claim",
                partial(
                    protocol.claim,
                    statements,
                    worker_id,
                    options.free_tasks,
                    options.queues,
                    limit - len(claimed),
                ),
                lanes.claim,
                self._stopping,
            )
            claimed.extend(free or ())
        return claimed

    def _finish_and_claim(self, limit: int, lanes: FetchLanes[SyncLane]) -> list[Claimed] | None:
        """Write the pending outcomes and claim up to ``limit`` jobs in one statement."""
        with self._lock:
            batch = self._pending[:_MAX_FINISH_BATCH]
            del self._pending[:_MAX_FINISH_BATCH]
            self._taken += len(batch)
        options = self.options
        answer = self._call(
            "claim",
            partial(
                protocol.finish_and_claim,
                self.queue.statements,
                self.identity.id,
                batch,
                options.free_tasks,
                options.queues,
                limit,
            ),
            lanes.claim,
            self._stopping,
        )
        if answer is None:  # gave up (stopping): the completer writes them
            with self._lock:
                self._pending[:0] = batch
                self._lock.notify_all()
            return None
        finished, claimed = answer
        self._written(batch, finished)
        return claimed

    # --- handler threads -----------------------------------------------------------------------

    def _handle_jobs(self) -> None:
        observers = (self.queue.events, self.identity.id)
        while (item := self._work.get()) is not None:
            job = item.job
            if self._stopping.is_set():  # claimed but not started: handed back at shutdown
                self._release(job, None)
                continue
            definition = self.options.tasks[job.task]
            timeout = item.timeout or definition.timeout
            if item.cancel_requested:
                job.request_cancel("cancel")
            timer = (
                self._timers.call_later(timeout, partial(job.request_cancel, "timeout"))
                if timeout
                else None
            )
            try:
                if definition.is_async:
                    assert self._portal is not None
                    outcome = self._portal.call(
                        run_async_handler, definition, job, timeout, *observers
                    )
                    # workflow hook (issue 15): steps it added commit with its success
                    outcome = self._jobs.commit_steps(definition, job, outcome)
                else:
                    outcome = self._jobs.run(definition, job, timeout, *observers)
            except BaseException as error:
                log.exception("job %s: the worker failed around its handler", job.id)
                from pgq_sa import _decisions as decisions

                outcome = decisions.errored(job.id, job.attempt, job.max_attempts, error)
            finally:
                if timer is not None:
                    self._timers.cancel(timer)
            self._release(job, None if job.cancel_reason == "shutdown" else outcome)

    def _release(self, job: Job, outcome: Outcome | None) -> None:
        with self._lock:
            self._running.pop(job.id, None)
            self._busy -= 1
            if outcome is None:
                self._unwritten -= 1
                self._held.discard(job.id)
            else:
                self._pending.append(outcome)
            self._lock.notify_all()

    # --- completer -----------------------------------------------------------------------------

    def _complete(self) -> None:
        """Write the outcomes no fetcher takes along: while some fetcher is hungry and keeps
        taking them, leave them; otherwise (idle queue, stopping) write them at once."""
        statements, lock, pending = self.queue.statements, self._lock, self._pending
        while True:
            with lock:
                while not pending and not self._completer_closing:
                    lock.wait()
                if not pending:
                    return
                if self._piggyback and self._hungry and not self._stopping.is_set():
                    taken, until = self._taken, time.monotonic() + HANDOVER_SECONDS
                    while (
                        self._taken == taken
                        and self._hungry
                        and not self._stopping.is_set()
                        and (left := until - time.monotonic()) > 0
                    ):
                        lock.wait(left)  # woken by every finished job too
                    if self._taken != taken or not pending:
                        continue  # the fetchers are taking them
                batch = pending[:_MAX_FINISH_BATCH]
                del pending[:_MAX_FINISH_BATCH]
            finished = self._call(
                "finish",
                partial(protocol.finish, statements, self.identity.id, batch),
                self._finish_lane,
            )
            self._written(batch, finished)

    def _written(self, batch: list[Outcome], finished: protocol.Finished | None) -> None:
        """Account for a batch of outcomes the database has (or, closing, never will have)."""
        with self._lock:
            self._unwritten -= len(batch)
            self._held.difference_update(o.job_id for o in batch)
            self._writes += 1
            if self._until_empty:
                self._wake.set()  # the fetcher re-checks for "empty" after every write
            self.processed += len(batch)
            self._lock.notify_all()
        if self.options.limited_tasks:
            self._wake.set()  # a slot of a limited task may have freed up
        if finished is not None and finished.next_run_at is not None:
            delay = finished.next_run_at.timestamp() - time.time()
            if delay <= 0:
                self._wake.set()
            else:
                self._timers.call_later(delay, self._wake.set)

    # --- heartbeat -----------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        statements, options = self.queue.statements, self.options
        while not self._closing.wait(options.heartbeat_interval):
            beat = self._call("heartbeat", lambda: protocol.heartbeat(statements, self.identity.id))
            if beat is None or (not beat.alive and self._closing.is_set()):
                return  # closing: the row is gone because this worker deregistered
            if not beat.alive:
                log.warning("worker %s: its row was gone; registering again", self.identity.name)
                self._call(
                    "register",
                    self._register,
                )
            self._cancel(beat.cancel)

    def _maintain(self) -> None:
        """Rescue the jobs of silent workers and prune old finished jobs, on every worker."""
        statements, queue, options = self.queue.statements, self.queue, self.options
        while not self._closing.wait(options.heartbeat_interval):
            self._call(
                "rescue",
                partial(protocol.rescue, statements, options.lease_timeout, queue.events),
            )
            for _ in range(MAX_PRUNE_ROUNDS):
                removed = self._call(
                    "prune",
                    partial(
                        protocol.prune,
                        statements,
                        queue.keep_succeeded,
                        queue.keep_failed,
                        PRUNE_BATCH,
                    ),
                )
                if not removed or removed < PRUNE_BATCH:
                    break

    def _schedule(self) -> None:
        """Enqueue each due fire time of the queue's cron schedules (once, cluster-wide)."""
        statements, options = self.queue.statements, self.options
        state = scheduler.SchedulerState(self.queue.schedules, options.tasks)
        if not self._call("schedules", partial(scheduler.upsert, statements, state, now_utc())):
            return
        touched = time.monotonic()
        while not self._stopping.is_set():
            if time.monotonic() - touched >= options.heartbeat_interval:
                self._call("schedules", partial(scheduler.touch, statements, state))
                touched = time.monotonic()
            self._call("fire", partial(scheduler.fire_due, statements, state, now_utc()))
            self._stopping.wait(state.next_wake(now_utc()))

    def _cancel(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            jobs = [self._running[i] for i in job_ids if i in self._running]
        for job in jobs:
            log.info("job %s: cancellation requested", job.id)
            job.request_cancel("cancel")

    # --- listener ------------------------------------------------------------------------------

    def _listen(self) -> None:
        connection = ListenConnection(self._engine.url, [notify_channel(self.queue.schema)])
        task_names = self.options.task_names
        failures = 0
        while not self._closing.is_set():
            try:
                if not connection.connected:
                    connection.connect()
                    if failures:
                        log.info("listener reconnected")
                    failures = 0
                    self._wake.set()  # anything may have happened while we were away
                    due = self._call(
                        "next run", partial(protocol.next_run_at, self.queue.statements, task_names)
                    )
                    if due is not None:
                        self._wake_for(due)
                for message in connection.wait(0.5):
                    if message.reason == "cancel" and message.job_id is not None:
                        self._cancel([message.job_id])
                    elif message.concerns(task_names):
                        self._wake_for(message.run_at)
            except psycopg.Error as error:
                connection.close()
                delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning(
                    "listener lost its connection (%s); retrying in %.2fs", _brief(error), delay
                )
                self._closing.wait(delay)
        connection.close()

    def _wake_for(self, run_at: float | None) -> None:
        delay = (run_at - time.time()) if run_at is not None else 0.0
        if delay <= 0.001:
            self._wake.set()
        else:
            self._timers.call_later(delay, self._wake.set)

    # --- shutdown ------------------------------------------------------------------------------

    def _shut_down(
        self,
        handlers: list[threading.Thread],
        completer: threading.Thread,
        heartbeater: threading.Thread,
        listener: threading.Thread,
    ) -> None:
        self.stop()
        deadline = time.monotonic() + self.options.shutdown_timeout
        with self._lock:
            while self._busy > 0 and not self._force.is_set() and time.monotonic() < deadline:
                self._lock.wait(0.05)
            unfinished = list(self._running.values())
        for job in unfinished:
            job.request_cancel("shutdown")  # async handlers stop; sync ones are abandoned
        for _ in handlers:
            self._work.put(None)
        with self._lock:
            self._completer_closing = True
            self._lock.notify_all()
        completer.join()
        for lanes in self._fetch_lanes:
            lanes.claim.close()
            lanes.limited.close()
        self._finish_lane.close()
        statements = self.queue.statements
        self._closing.set()
        handed_back = self._call_once(lambda: protocol.hand_back(statements, self.identity.id))
        if handed_back:
            log.info("handed %d unfinished jobs back to the queue", handed_back)
        self._call_once(lambda: protocol.deregister(statements, self.identity.id))
        heartbeater.join()
        listener.join()
        self._timers.stop()
        for thread in handlers:
            thread.join(timeout=0.5 if unfinished else None)
        log.info("worker %s stopped", self.identity.name)

    def _call_once(self, operation: Callable[[], Operation[T]]) -> T | None:
        try:
            return self._db.run(operation())
        except (DBAPIError, psycopg.Error) as error:
            log.warning("at shutdown: %s (rescue will recover any held jobs)", _brief(error))
            return None


def _brief(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(error).__name__
