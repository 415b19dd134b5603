"""``AsyncWorker``: a worker for async services, an anyio task group on asyncio or trio.

The same pieces as the thread worker, as tasks: fetchers claiming up to the free concurrency, a
fixed pool of runner tasks fed from a deque (``async def`` handlers awaited and really cancelled on
timeout or cancellation; ``def`` handlers in worker threads), outcomes written by the fetchers with
their next claim (one statement) or by a completer when no fetcher is about to claim, a
heartbeater and a listener.
On asyncio the database is an AsyncEngine (asyncpg by default); on trio, or given a sync Engine,
a sync engine runs in worker threads. Statements and decisions are the thread worker's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import psycopg
import sniffio
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from pgq_sa import _decisions as decisions
from pgq_sa._config import make_async_engine, make_engine
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
from pgq_sa._worker.handlers import _interrupted
from pgq_sa._worker.lanes import (
    CLAIM_SESSION,
    FINISH_SESSION,
    AsyncDatabase,
    AsyncioDatabase,
    AsyncLane,
    FetchLanes,
    ThreadedDatabase,
    ThreadedLane,
    fetcher_count,
)
from pgq_sa._worker.listener import ListenConnection
from pgq_sa._worker.options import worker_options
from pgq_sa._worker.thread_worker import (
    _MAX_FINISH_BATCH,
    _RECONNECT_DELAYS,
    MAX_PRUNE_ROUNDS,
    PRUNE_BATCH,
    _brief,
)

log = logging.getLogger("pgq_sa.worker")

T = TypeVar("T")

# How long the completer leaves pending outcomes to fetchers that keep claiming (they write them
# with their next claim) before it writes them itself, when no fetcher took any meanwhile.
_HANDOVER_SECONDS = 0.05


class _Wakeup:
    """A resettable event for one event loop."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()


class AsyncWorker:
    """Run the queue's jobs with up to ``concurrency`` at once, inside the caller's event loop."""

    kind = "async"

    def __init__(
        self,
        queue: Queue,
        bind: AsyncEngine | Engine | str | URL,
        *,
        concurrency: int = 100,
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
            capacity=concurrency,
            capacity_name="concurrency",
            batch_size=batch_size,
            queues=queues,
            heartbeat_interval=heartbeat_interval,
            lease_timeout=lease_timeout,
            poll_interval=poll_interval,
            shutdown_timeout=shutdown_timeout,
        )
        if not isinstance(bind, (AsyncEngine, Engine, str, URL)):
            raise TypeError(
                "bind must be a database URL, an AsyncEngine or a sync Engine, got "
                + type(bind).__name__
            )
        self.queue = queue
        self._bind = bind
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
        self.processed = 0
        self._stop_requested = threading.Event()
        self._token: Any = None
        self._loop_thread: int | None = None

    @property
    def id(self) -> uuid.UUID:
        return self.identity.id

    def stop(self) -> None:
        """Stop claiming and let running jobs finish; safe from any thread."""
        self._stop_requested.set()
        token = self._token
        if token is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._begin_stop()
        else:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                anyio.from_thread.run_sync(self._begin_stop, token=token)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._backlog.set()
        self._slot_freed.set()
        self._handover.set()

    # --- running -------------------------------------------------------------------------------

    def _database(self, backend: str) -> tuple[AsyncDatabase, Callable[[], Awaitable[None]]]:
        bind = self._bind
        if isinstance(bind, AsyncEngine):
            if backend != "asyncio":
                raise RuntimeError(
                    "an AsyncEngine runs on asyncio only; on trio pass a URL or a sync Engine"
                )
            return AsyncioDatabase(bind), _nothing
        if isinstance(bind, Engine):
            return ThreadedDatabase(bind), _nothing
        if backend == "asyncio":
            engine = make_async_engine(bind)
            return AsyncioDatabase(engine), engine.dispose
        sync = make_engine(bind)

        async def dispose() -> None:
            sync.dispose()

        return ThreadedDatabase(sync), dispose

    async def run(self, *, until_empty: bool = False) -> None:
        """Work until stopped; with ``until_empty`` return once nothing due is left."""
        backend = sniffio.current_async_library()
        self._db, dispose = self._database(backend)
        self._fetch_lanes = [
            FetchLanes(
                self._db.lane(CLAIM_SESSION), self._db.lane(CLAIM_SESSION, transactional=True)
            )
            for _ in range(fetcher_count(self.options))
        ]
        self._finish_lane = self._db.lane(FINISH_SESSION)
        self._jobs = transactional.AsyncJobs.for_worker(
            self._db, self.options, self.queue.statements, self.identity.id
        )
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        options, statements = self.options, self.queue.statements
        self._stopping = False
        self._closing = anyio.Event()
        self._wake = _Wakeup()
        self._backlog = _Wakeup()
        self._until_empty = until_empty
        self._slot_freed = _Wakeup()
        self._busy = 0
        self._unwritten = 0
        self._writes = 0
        self._running: dict[int, Job] = {}
        self._scopes: dict[int, anyio.CancelScope] = {}  # async jobs running: their runner's scope
        self._held: set[int] = set()
        self._claiming = 0  # fetchers between a claim and recording its jobs in _held
        self._failures = 0
        self._thread_limiter = anyio.CapacityLimiter(self.options.capacity)
        self._work: deque[Claimed] = deque()
        self._idle_runners: list[anyio.Event] = []
        self._summoned = 0  # runners woken for the deque that have not resumed yet
        self._pending: list[Outcome] = []  # finished attempts not yet written
        self._taken = 0  # outcomes fetchers took along with a claim, ever
        self._outcome_ready = _Wakeup()
        self._handover = _Wakeup()  # a fetcher stopped claiming: the completer should write
        self._hungry = 0  # fetchers whose last claim came back full (they claim again at once)
        self._completer_closing = False
        self._completer_done = anyio.Event()
        # Outcomes ride on the next claim unless limited tasks need their own claim transaction.
        self._piggyback = bool(options.free_tasks) and not options.limited_tasks
        self._force = False
        if self._stop_requested.is_set():
            self._stopping = True
        try:
            registered = await self._call(
                "register",
                self._register,
            )
            if registered is None or not await self._call(
                "limits", partial(protocol.upsert_limits, statements, list(options.tasks.values()))
            ):
                return
            log.info(
                "worker %s started on %s: concurrency %d, tasks %s",
                self.identity.name,
                backend,
                options.capacity,
                ", ".join(options.task_names),
            )
            async with anyio.create_task_group() as services:
                self._services = services
                services.start_soon(self._complete)
                services.start_soon(self._heartbeat)
                services.start_soon(self._listen)
                services.start_soon(self._maintain)
                if self.queue.schedules:
                    services.start_soon(self._schedule)
                if self._handle_signals and threading.current_thread() is threading.main_thread():
                    services.start_soon(self._watch_signals)
                async with anyio.create_task_group() as handlers:
                    self._handlers = handlers
                    for _ in range(options.capacity):
                        handlers.start_soon(self._run_jobs)
                    try:
                        await self._fetch(until_empty)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await self._drain()
                with anyio.CancelScope(shield=True):
                    self._completer_closing = True
                    self._outcome_ready.set()
                    await self._completer_done.wait()
                    for lanes in self._fetch_lanes:
                        await lanes.claim.close()
                        await lanes.limited.close()
                    await self._finish_lane.close()
                    self._closing.set()
                    handed_back = await self._call_once(
                        lambda: protocol.hand_back(statements, self.identity.id)
                    )
                    if handed_back:
                        log.info("handed %d unfinished jobs back to the queue", handed_back)
                    await self._call_once(lambda: protocol.deregister(statements, self.identity.id))
                services.cancel_scope.cancel()
            log.info("worker %s stopped", self.identity.name)
        finally:
            self._token = None
            with anyio.CancelScope(shield=True):
                await self._jobs.aclose()
                await dispose()

    async def _call(
        self,
        what: str,
        operation: Callable[[], Operation[T]],
        lane: AsyncLane | ThreadedLane | None = None,
        *,
        give_up_on_stop: bool = False,
    ) -> T | None:
        """Run one operation, retrying with backoff while the database is unreachable; gives up
        when the worker is closing (claims: as soon as it is stopping)."""
        run = lane.run if lane is not None else self._db.run
        for attempt in range(10**9):
            try:
                # Shielded: a statement in flight finishes (or fails) before the task may be
                # cancelled, so no pooled connection is abandoned half-way.
                with anyio.CancelScope(shield=True):
                    result = await run(operation())
                return result  # noqa: RET504 - mypy: a CancelScope may swallow
            except (DBAPIError, psycopg.Error, OSError) as error:
                self._failures += 1
                delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)]
                log.warning("%s failed (%s); retrying in %.2fs", what, _brief(error), delay)
                with anyio.move_on_after(delay):
                    await self._closing.wait()
                if self._closing.is_set() or (give_up_on_stop and self._stopping):
                    return None
        return None  # pragma: no cover

    async def _call_once(self, operation: Callable[[], Operation[T]]) -> T | None:
        try:
            with anyio.CancelScope(shield=True):
                result = await self._db.run(operation())
            return result  # noqa: RET504 - mypy: a CancelScope may swallow
        except (DBAPIError, psycopg.Error, OSError) as error:
            log.warning("at shutdown: %s (rescue will recover any held jobs)", _brief(error))
            return None

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self._stopping:
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    self._force = True
                    self._handlers.cancel_scope.cancel()
                else:
                    log.info(
                        "%s: finishing running jobs, then stopping", signal.Signals(signum).name
                    )
                self._begin_stop()

    # --- fetcher -------------------------------------------------------------------------------

    async def _fetch(self, until_empty: bool) -> None:
        async with anyio.create_task_group() as fetchers:
            for number, lanes in enumerate(self._fetch_lanes):
                fetchers.start_soon(self._fetch_with, until_empty, lanes, number == 0)

    async def _fetch_with(self, until_empty: bool, lanes: FetchLanes[Any], leader: bool) -> None:
        """One fetcher: reserve free slots, claim up to that many (writing the outcomes pending
        meanwhile in the same statement), hand the jobs to the runners, repeat.

        Several fetchers run at once (each on its own connection) so that claims overlap and
        share commit flushes; the reservation keeps them from over-filling the concurrency. Only
        the leader answers wake-ups; the others join while claims come back full (a backlog), so
        one NOTIFY costs one claim. A fetcher whose claims come back full is *hungry*: it claims
        again as soon as a slot frees, so the completer leaves pending outcomes to it.
        """
        options = self.options
        work = self._work
        hungry = False
        try:
            while not self._stopping:
                while self._busy >= options.capacity and not self._stopping:
                    self._slot_freed.clear()
                    await self._slot_freed.wait(options.poll_interval)
                if self._stopping:
                    return
                limit = min(options.capacity - self._busy, options.batch_size)
                self._busy += limit  # reserved until the claim answers
                self._claiming += 1
                writes_before = self._writes
                if leader:
                    self._wake.clear()
                failures = self._failures
                claimed = await self._claim(limit, lanes) or []
                self._claiming -= 1
                self._busy -= limit - len(claimed)
                self._unwritten += len(claimed)
                running, held = self._running, self._held
                for item in claimed:
                    job = item.job
                    running[job.id] = job
                    held.add(job.id)
                    work.append(item)
                if claimed and not self._summoned:
                    self._summon()
                if self._failures != failures:
                    await self._return_strays()
                if len(claimed) == limit:
                    if not hungry:
                        hungry = True
                        self._hungry += 1
                    self._backlog.set()
                    continue
                if hungry:
                    hungry = False
                    self._hungry -= 1
                    self._handover.set()
                self._backlog.clear()
                if not leader:
                    await self._backlog.wait(options.poll_interval)
                    continue
                if (
                    until_empty
                    and not claimed
                    and self._busy == self._unwritten == 0 == self._writes - writes_before
                ):
                    log.info("no due job left: stopping (until_empty)")
                    self._begin_stop()
                    return
                await self._wake.wait(options.poll_interval)
        finally:
            if hungry:
                self._hungry -= 1
            self._handover.set()

    async def _return_strays(self) -> None:
        """After a failed claim: a claim may have committed though its answer was lost.

        Waits until no other fetcher is between its claim and recording what it claimed, so
        that only jobs nobody knows about are handed back.
        """
        while self._claiming and not self._closing.is_set():
            await anyio.sleep(0.05)
        await self._call(
            "hand back",
            partial(
                protocol.hand_back, self.queue.statements, self.identity.id, sorted(self._held)
            ),
        )

    async def _claim(self, limit: int, lanes: FetchLanes[Any]) -> list[Claimed] | None:
        """Claim up to ``limit`` jobs: limited tasks under their limit rows, then the rest."""
        options, statements, worker_id = self.options, self.queue.statements, self.identity.id
        if self._piggyback and self._pending:
            return await self._finish_and_claim(limit, lanes)
        claimed: list[Claimed] = []
        if options.limited_tasks:
            limited = await self._call(
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
                give_up_on_stop=True,
            )
            if limited is None:
                return None
            claimed.extend(limited)
            if limited and options.pacing:
                self._wake_at(time.time() + options.pacing)
        if options.free_tasks and len(claimed) < limit:
            free = await self._call(
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
                give_up_on_stop=True,
            )
            claimed.extend(free or ())
        return claimed

    async def _finish_and_claim(self, limit: int, lanes: FetchLanes[Any]) -> list[Claimed] | None:
        """Write the pending outcomes and claim up to ``limit`` jobs in one statement."""
        batch = self._pending[:_MAX_FINISH_BATCH]
        del self._pending[:_MAX_FINISH_BATCH]
        self._taken += len(batch)
        options = self.options
        answer = await self._call(
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
            give_up_on_stop=True,
        )
        if answer is None:  # gave up (stopping): the completer writes them
            self._pending[:0] = batch
            self._outcome_ready.set()
            return None
        finished, claimed = answer
        self._written(batch, finished)
        return claimed

    async def _drain(self) -> None:
        """Give running jobs ``shutdown_timeout`` to finish, then cancel what is left."""
        self._stopping = True
        with anyio.move_on_after(self.options.shutdown_timeout):
            while self._busy > 0 and not self._force:
                self._slot_freed.clear()
                await self._slot_freed.wait(0.05)
        for job in list(self._running.values()):
            job.request_cancel("shutdown")
        self._handlers.cancel_scope.cancel()

    # --- handlers ------------------------------------------------------------------------------

    async def _run_jobs(self) -> None:
        """One runner of the pool: run jobs from the deque; when it is empty, park until the
        fetcher hands out more (cheaper than a task, a cancel scope and an event per job).

        The runner's cancel scope is shared by the ``async def`` jobs it runs one after another:
        a timeout sets its deadline, a cancellation (:meth:`_cancel`) cancels it while that job
        runs. A scope that was cancelled is left right after its job and a fresh one entered, so
        a cancellation never reaches the next job.
        """
        work, idle = self._work, self._idle_runners
        while True:
            with anyio.CancelScope() as scope:
                while True:
                    while work and not scope.cancel_called:
                        item = work.popleft()
                        if work and not self._summoned:
                            self._summon()  # the next job gets a runner as soon as this one waits
                        await self._handle(item, scope)
                    if scope.cancel_called:
                        break
                    parked = anyio.Event()
                    idle.append(parked)
                    try:
                        await parked.wait()
                    finally:
                        if parked.is_set():
                            self._summoned -= 1
                        else:
                            idle.remove(parked)

    def _summon(self) -> None:
        """Wake one parked runner for the jobs waiting in the deque.

        One at a time: a runner that takes a job while more wait summons the next, so every job
        still gets its own runner as soon as the one before it waits on something, while jobs
        that never wait (no-ops, CPU work) are run by the runner already awake instead of waking
        one runner per job only to find the deque empty.
        """
        if self._idle_runners:
            self._idle_runners.pop().set()
            self._summoned += 1

    async def _handle(self, item: Claimed, scope: anyio.CancelScope) -> None:
        job = item.job
        outcome: Outcome | None = None
        try:
            if self._stopping:
                return
            definition = self.options.tasks[job.task]
            timeout = item.timeout or definition.timeout
            if item.cancel_requested:
                job.request_cancel("cancel")
            if definition.is_async:
                # workflow steps too: the steps they add commit with their success (issue 15)
                if definition.transactional or self.queue.events.active or job.workflow_id:
                    # its own scope, transaction and events (see workers/transactional.py)
                    outcome = await self._jobs.run(
                        definition, job, timeout, self.queue.events, self.identity.id
                    )
                else:
                    outcome = await self._run_async(definition, job, timeout, scope)
            else:
                outcome = await self._run_in_thread(definition, job, timeout)
        except anyio.get_cancelled_exc_class():
            if scope.cancel_called and job.cancel_reason in ("cancel", "timeout"):
                outcome = _interrupted(job, timeout)  # ours: recorded; the scope absorbs it
            else:
                job.request_cancel("shutdown")
            raise
        except Exception as error:  # never lose a job to a worker bug
            log.exception("job %s: the worker failed around its handler", job.id)
            outcome = decisions.errored(job.id, job.attempt, job.max_attempts, error)
        finally:
            self._running.pop(job.id, None)
            self._busy -= 1
            self._slot_freed.set()
            if outcome is None or job.cancel_reason == "shutdown":
                self._unwritten -= 1
                self._held.discard(job.id)
            else:
                self._pending.append(outcome)
                self._outcome_ready.set()

    async def _run_async(
        self, definition: Any, job: Job, timeout: float | None, scope: anyio.CancelScope
    ) -> Outcome:
        """Await an ``async def`` handler inside the runner's scope (see :meth:`_run_jobs`);
        the outcomes are those of :func:`~pgq_sa._worker.handlers.run_async_handler`."""
        if job.cancelled:
            return _interrupted(job, timeout)
        self._scopes[job.id] = scope
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
                return _interrupted(job, timeout)
            return decisions.errored(job.id, job.attempt, job.max_attempts, error)
        finally:
            del self._scopes[job.id]
            if timeout is not None and not scope.cancel_called:
                scope.deadline = math.inf
        if job.cancelled or scope.cancel_called:
            if not job.cancelled:
                job.request_cancel("timeout")
            return _interrupted(job, timeout)
        return decisions.succeeded(job.id, job.attempt, value)

    async def _run_in_thread(self, definition: Any, job: Job, timeout: float | None) -> Outcome:
        async with anyio.create_task_group() as deadline:
            if timeout:

                async def expire() -> None:
                    await anyio.sleep(timeout)
                    job.request_cancel("timeout")

                deadline.start_soon(expire)
            outcome = await anyio.to_thread.run_sync(
                self._jobs.sync.run,
                definition,
                job,
                timeout,
                self.queue.events,
                self.identity.id,
                limiter=self._thread_limiter,
                abandon_on_cancel=True,
            )
            deadline.cancel_scope.cancel()
        return outcome

    # --- completer -----------------------------------------------------------------------------

    async def _complete(self) -> None:
        """Write the outcomes no fetcher takes along: while some fetcher is hungry and keeps
        taking them, leave them; otherwise (idle queue, stopping) write them at once."""
        pending, statements = self._pending, self.queue.statements
        try:
            while True:
                if not pending:
                    if self._completer_closing:
                        return
                    self._outcome_ready.clear()
                    await self._outcome_ready.wait(self.options.poll_interval)
                    continue
                if self._piggyback and self._hungry and not self._stopping:
                    taken = self._taken
                    self._handover.clear()
                    await self._handover.wait(_HANDOVER_SECONDS)
                    if self._taken != taken:
                        continue  # the fetchers are taking them
                    if not pending:
                        continue
                batch = pending[:_MAX_FINISH_BATCH]
                del pending[:_MAX_FINISH_BATCH]
                finished = await self._call(
                    "finish",
                    partial(protocol.finish, statements, self.identity.id, batch),
                    self._finish_lane,
                )
                self._written(batch, finished)
        finally:
            self._completer_done.set()

    def _written(self, batch: list[Outcome], finished: protocol.Finished | None) -> None:
        """Account for a batch of outcomes the database has (or, closing, never will have)."""
        self._unwritten -= len(batch)
        self._held.difference_update(o.job_id for o in batch)
        self._writes += 1
        if self._until_empty:
            self._wake.set()  # the fetcher re-checks for "empty" after every write
        self.processed += len(batch)
        self._slot_freed.set()
        if self.options.limited_tasks:
            self._wake.set()  # a slot of a limited task may have freed up
        if finished is not None and finished.next_run_at is not None:
            self._wake_at(finished.next_run_at.timestamp())

    def _wake_at(self, when: float) -> None:
        delay = when - time.time()
        if delay <= 0.001:
            self._wake.set()
            return

        async def later() -> None:
            await anyio.sleep(delay)
            self._wake.set()

        self._services.start_soon(later)

    # --- heartbeat and listener ----------------------------------------------------------------

    async def _heartbeat(self) -> None:
        statements, options = self.queue.statements, self.options
        while True:
            await anyio.sleep(options.heartbeat_interval)
            beat = await self._call(
                "heartbeat", lambda: protocol.heartbeat(statements, self.identity.id)
            )
            if beat is None or (not beat.alive and self._closing.is_set()):
                return  # closing: the row is gone because this worker deregistered
            if not beat.alive:
                log.warning("worker %s: its row was gone; registering again", self.identity.name)
                await self._call(
                    "register",
                    self._register,
                )
            self._cancel(beat.cancel)

    async def _maintain(self) -> None:
        """Rescue the jobs of silent workers and prune old finished jobs, on every worker."""
        statements, queue, options = self.queue.statements, self.queue, self.options
        while True:
            await anyio.sleep(options.heartbeat_interval)
            await self._call(
                "rescue", partial(protocol.rescue, statements, options.lease_timeout, queue.events)
            )
            for _ in range(MAX_PRUNE_ROUNDS):
                removed = await self._call(
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

    async def _schedule(self) -> None:
        """Enqueue each due fire time of the queue's cron schedules (once, cluster-wide)."""
        statements, options = self.queue.statements, self.options
        state = scheduler.SchedulerState(self.queue.schedules, options.tasks)
        if not await self._call(
            "schedules", partial(scheduler.upsert, statements, state, now_utc())
        ):
            return
        touched = time.monotonic()
        while not self._stopping:
            if time.monotonic() - touched >= options.heartbeat_interval:
                await self._call("schedules", partial(scheduler.touch, statements, state))
                touched = time.monotonic()
            await self._call("fire", partial(scheduler.fire_due, statements, state, now_utc()))
            with anyio.move_on_after(state.next_wake(now_utc())):
                await self._closing.wait()

    def _cancel(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            job = self._running.get(job_id)
            if job is not None:
                log.info("job %s: cancellation requested", job.id)
                job.request_cancel("cancel")
                scope = self._scopes.get(job_id)
                if scope is not None:  # an async handler running: stop it
                    scope.cancel()

    async def _listen(self) -> None:
        url = self._db.url
        connection = ListenConnection(url, [notify_channel(self.queue.schema)])
        task_names = self.options.task_names
        failures = 0
        try:
            while not self._closing.is_set():
                try:
                    if not connection.connected:
                        await anyio.to_thread.run_sync(connection.connect)
                        if failures:
                            log.info("listener reconnected")
                        failures = 0
                        self._wake.set()
                        due = await self._call(
                            "next run",
                            partial(protocol.next_run_at, self.queue.statements, task_names),
                        )
                        if due is not None:
                            self._wake_at(due)
                    for message in await connection.wait_async(1.0):
                        if message.reason == "cancel" and message.job_id is not None:
                            self._cancel([message.job_id])
                        elif message.concerns(task_names):
                            if message.run_at is not None:
                                self._wake_at(message.run_at)
                            else:
                                self._wake.set()
                except (psycopg.Error, OSError) as error:
                    connection.close()
                    delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
                    failures += 1
                    log.warning(
                        "listener lost its connection (%s); retrying in %.2fs", _brief(error), delay
                    )
                    await anyio.sleep(delay)
        finally:
            connection.close()


async def _nothing() -> None:
    return None
