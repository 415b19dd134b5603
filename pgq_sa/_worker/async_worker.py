"""``AsyncWorker``: the worker core driven by anyio tasks, for async services (asyncio or trio).

Every service of :mod:`.services` runs as a task and waits by awaiting: a database call on its
lane, a resettable event per signal. The core is only touched from the event loop, so it needs
no lock; ``stop()`` from another thread hops onto the loop. Handlers run on a fixed pool of
runner tasks fed from a deque: ``async def`` handlers are awaited inside the runner's cancel
scope (really cancelled on a timeout or a cancellation), ``def`` handlers run in worker threads.
On asyncio the database is an AsyncEngine (asyncpg by default); on trio, or given a sync Engine,
a sync engine runs in worker threads.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import sniffio
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from pgq_sa._decisions import Outcome
from pgq_sa._job import Job
from pgq_sa._notifications import ListenConnection, Message
from pgq_sa._ops.worker import Claimed
from pgq_sa._queue import Queue
from pgq_sa._schema import notify_channel
from pgq_sa._tasks import TaskDefinition
from pgq_sa._worker import effects, services, transactional
from pgq_sa._worker.base import Worker
from pgq_sa._worker.core import fetcher_count, timeout_of
from pgq_sa._worker.effects import Signal
from pgq_sa._worker.handlers import failed_around, interrupted, run_in_scope, run_in_thread
from pgq_sa._worker.lanes import AsyncDatabase, async_database, interrupt_claims, open_lanes
from pgq_sa._worker.options import worker_options

T = TypeVar("T")


class AsyncWorker(Worker):
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
        statement_timeout: float = 10.0,
        name: str | None = None,
        handle_signals: bool = True,
    ) -> None:
        options = worker_options(
            queue,
            capacity=concurrency,
            capacity_name="concurrency",
            batch_size=batch_size,
            queues=queues,
            heartbeat_interval=heartbeat_interval,
            lease_timeout=lease_timeout,
            poll_interval=poll_interval,
            shutdown_timeout=shutdown_timeout,
            statement_timeout=statement_timeout,
        )
        if not isinstance(bind, (AsyncEngine, Engine, str, URL)):
            raise TypeError(
                "bind must be a database URL, an AsyncEngine or a sync Engine, got "
                + type(bind).__name__
            )
        super().__init__(queue, options, name, handle_signals)
        self._bind = bind

    async def run(self, *, until_empty: bool = False) -> None:
        """Work until stopped; with ``until_empty`` return once nothing due is left."""
        backend = sniffio.current_async_library()
        database, dispose = async_database(self._bind, backend, self.options.statement_timeout)
        jobs = transactional.AsyncJobs.for_worker(
            database, self.options, self.queue.statements, self.identity.id
        )
        try:
            self._driver = _Tasks(self, database, jobs, until_empty)
            await self._driver.run()
        finally:
            self._driver = None
            with anyio.CancelScope(shield=True):
                await jobs.aclose()
                await dispose()


class _Event:
    """A resettable event of one event loop."""

    __slots__ = ("_event", "set")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.set: Callable[[], None] = self._event.set  # a few times per job: no extra frame

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()
            self.set = self._event.set

    async def wait(self, timeout: float | None) -> bool:
        event = self._event
        if event.is_set() or timeout is None:  # no timeout to keep: no cancel scope
            await event.wait()  # (set: a checkpoint only)
            return True
        with anyio.move_on_after(timeout):
            await event.wait()
        return event.is_set()


class _Tasks:
    """One run of an AsyncWorker: the core, its tasks, and how they wait (the Runtime)."""

    def __init__(
        self,
        worker: AsyncWorker,
        database: AsyncDatabase,
        jobs: transactional.AsyncJobs,
        until_empty: bool,
    ) -> None:
        self._worker = worker
        self._database = database
        self._jobs = jobs
        self._events = {signal: _Event() for signal in Signal}
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self.core = worker._new_core(self, until_empty, database.url)
        self._fetchers = fetcher_count(worker.options)
        self._lanes: dict[tuple[effects.Lane, int], Any] = {}  # opened once registered
        # the URL as given: an async engine's URL lost the options it turned into connect args
        given = worker._bind if isinstance(worker._bind, (str, URL)) else database.url
        self._listen = ListenConnection(given, [notify_channel(worker.queue.schema)])
        self._work: deque[Claimed] = deque()
        self._idle_runners: list[anyio.Event] = []
        self._summoned = 0  # runners woken for the deque that have not resumed yet
        self._scopes: dict[int, anyio.CancelScope] = {}  # async jobs running: their runner's scope
        self._threads = anyio.CapacityLimiter(worker.options.capacity)
        self._services: anyio.abc.TaskGroup | None = None
        self._runners: anyio.abc.TaskGroup | None = None
        self._running_services: set[str] = set()
        self._service_ended = _Event()
        self._listen_scope: anyio.CancelScope | None = None  # the listener's wait, if waiting

    # --- Runtime -------------------------------------------------------------------------------

    def set(self, signal: Signal) -> None:
        self._events[signal].set()
        if signal is Signal.CLOSING and self._listen_scope is not None:
            self._listen_scope.cancel()  # the listener does not sit out its wait

    def clear(self, signal: Signal) -> None:
        self._events[signal].clear()

    def call_later(self, delay: float, signal: Signal) -> None:
        async def later() -> None:
            await anyio.sleep(delay)
            self._events[signal].set()

        if self._services is None:  # not running yet: nothing waits for it
            self._events[signal].set()
        else:
            self._services.start_soon(later)

    def dispatch(self, items: list[Claimed]) -> None:
        self._work.extend(items)
        if not self._summoned:
            self._summon()

    def interrupt(self, job: Job) -> None:
        scope = self._scopes.get(job.id)
        if scope is not None:  # an async handler running: stop it
            scope.cancel()

    # --- running -------------------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        if threading.get_ident() == self._loop_thread:
            self._stop_on_loop(force)
        else:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                anyio.from_thread.run_sync(self._stop_on_loop, force, token=self._token)

    def _stop_on_loop(self, force: bool) -> None:
        self.core.begin_stop(force=force)
        interrupt_claims(self._lanes)

    async def run(self) -> None:
        core, worker = self.core, self._worker
        if not await self._drive(services.register(core)):
            return
        worker._refuse_transaction_pooling(await self._database.check_pooling())
        self._lanes = open_lanes(
            self._database, self._fetchers, worker.options.heartbeat_deadline, core.durability
        )
        worker._started(
            sniffio.current_async_library(),
            self._database.describe(),
            self._database.driver,
            worker._bind,
        )
        async with anyio.create_task_group() as self._services:
            for name, service in services.background(core):
                self._running_services.add(name)
                self._services.start_soon(self._serve, name, service(core))
            if worker._handle_signals and threading.current_thread() is threading.main_thread():
                self._services.start_soon(self._watch_signals)
            async with anyio.create_task_group() as self._runners:
                for _ in range(worker.options.capacity):
                    self._runners.start_soon(self._run_jobs)
                try:
                    async with anyio.create_task_group() as fetchers:
                        for number in range(self._fetchers):
                            fetchers.start_soon(self._drive, services.fetcher(core, number))
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._drive(services.shutdown(core))
            self._services.cancel_scope.cancel()  # the signal watcher and pending wake-ups

    async def _serve(self, name: str, service: effects.Service[None]) -> None:
        try:
            await self._drive(service)
        except Exception:  # a service must never die silently
            services.log.exception("worker service %s failed; stopping the worker", name)
            self.core.begin_stop()
        finally:
            self._running_services.discard(name)
            self._service_ended.set()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._service_ended.clear()
            await self._service_ended.wait(None)

    async def _drive(self, service: effects.Service[T]) -> T:
        """Run one service to its end, awaiting each effect."""
        sent: Any = None
        error: BaseException | None = None
        while True:
            done, value = services.advance(service, sent, error)
            if done:
                return value  # type: ignore[no-any-return]
            sent, error = None, None
            try:
                # A Call is shielded from this task's cancellation by what runs it: async_guard
                # on asyncio, anyio's worker threads (not abandoned on cancel) on the threaded
                # database; a statement in flight finishes or fails first.
                sent = await self._perform(value)
            except services.DATABASE_ERRORS as failure:
                error = failure

    async def _perform(self, effect: effects.Effect) -> Any:
        match effect:
            case effects.Call(operation, lane, number, deadline):
                if lane is effects.Lane.POOL:
                    return await self._database.run(operation, deadline)
                return await self._lanes[lane, number].run(operation, deadline)
            case effects.Wait(signal, timeout):
                if self._summoned:  # runners woken for jobs just claimed: they start first
                    await anyio.lowlevel.checkpoint()
                return await self._events[signal].wait(timeout)
            case effects.ListenConnect():
                return await anyio.to_thread.run_sync(self._listen.connect)
            case effects.ListenWait(timeout):
                return await self._listen_wait(timeout)
            case effects.ListenPing(timeout):
                return await anyio.to_thread.run_sync(self._listen.ping, timeout)
            case effects.ListenClose():
                return self._listen.close()
            case effects.Shutdown(step):
                return await self._shut_down(step)
        raise AssertionError(f"unknown effect {effect!r}")  # pragma: no cover

    async def _listen_wait(self, timeout: float) -> list[Message]:
        """The listener's wait, ended at once when the worker closes (a stop would otherwise
        wait out up to ``LISTEN_WAIT`` for the listener to look at its flags again).

        It first lets the tasks its last messages woke run: a fetcher woken by a NOTIFY sends
        its claim before the listener spends time setting up its next wait."""
        await anyio.lowlevel.checkpoint()
        if self._events[Signal.CLOSING].is_set():
            return []
        with anyio.move_on_after(timeout) as self._listen_scope:  # one scope: timeout and close
            try:
                return await self._listen.wait_async(None)
            finally:
                self._listen_scope = None
        return []

    async def _shut_down(self, step: effects.ShutdownStep) -> None:
        if step is effects.ShutdownStep.STOP_RUNNERS:
            assert self._runners is not None
            self._runners.cancel_scope.cancel()
        elif step is effects.ShutdownStep.JOIN_COMPLETER:
            with anyio.move_on_after(self.core.final_deadline):
                await self._wait_until(self._completer_done)
            if not self._completer_done():  # a write still waiting for an answer: cut it
                self._lanes[effects.Lane.FINISH, 0].interrupt()
                await self._wait_until(self._completer_done)
        elif step is effects.ShutdownStep.CLOSE_LANES:
            for lane in self._lanes.values():
                await lane.close()
        elif step is effects.ShutdownStep.JOIN_SERVICES:
            await self._wait_until(lambda: not self._running_services)
            self._listen.close()

    def _completer_done(self) -> bool:
        return "completer" not in self._running_services

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._stop_on_loop(self._worker._signalled(signum))

    # --- runners -------------------------------------------------------------------------------

    async def _run_jobs(self) -> None:
        """One runner of the pool: run jobs from the deque; when it is empty, park until the
        fetcher hands out more (cheaper than a task, a cancel scope and an event per job).

        The runner's cancel scope is shared by the ``async def`` jobs it runs one after another:
        a timeout sets its deadline, a cancellation cancels it while that job runs. A scope that
        was cancelled is left right after its job and a fresh one entered, so a cancellation
        never reaches the next job.
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
        """Wake one parked runner for the jobs waiting in the deque: one at a time, so jobs that
        never wait are run by the runner already awake instead of waking one runner per job."""
        if self._idle_runners:
            self._idle_runners.pop().set()
            self._summoned += 1

    async def _handle(self, item: Claimed, scope: anyio.CancelScope) -> None:
        job = item.job
        definition = self.core.start(item)
        if definition is None:
            return
        timeout = timeout_of(item, definition)
        outcome: Outcome | None = None
        try:
            if definition.is_async and not (
                definition.transactional or self._worker.queue.events.active or job.workflow_id
            ):
                # in the runner's own scope: no coroutine, task or scope of its own (the hot path)
                outcome = await run_in_scope(definition, job, timeout, scope, self._scopes)
            else:
                outcome = await self._run_apart(job, definition, timeout)
        except anyio.get_cancelled_exc_class():
            if scope.cancel_called and job.cancel_reason in ("cancel", "timeout"):
                outcome = interrupted(job, timeout)  # ours: recorded; the scope absorbs it
            else:
                job.request_cancel("shutdown")
            raise
        except BaseException as error:  # whatever escapes, the attempt fails; the worker goes on
            outcome = failed_around(job, error)
        finally:
            self.core.release(job, outcome)

    async def _run_apart(
        self, job: Job, definition: TaskDefinition, timeout: float | None
    ) -> Outcome:
        """A ``def`` handler in a worker thread; an ``async def`` one that needs its own scope,
        transaction and events (see _worker/transactional.py): transactional tasks, any task
        while events are observed, and workflow steps (the steps they add commit with their
        success)."""
        events, worker_id = self._worker.queue.events, self.core.worker_id
        if not definition.is_async:
            run = partial(self._jobs.sync.run, definition, job, timeout, events, worker_id)
            return await run_in_thread(run, job, timeout, self._threads)
        return await self._jobs.run(definition, job, timeout, events, worker_id)
