"""``ThreadWorker``: the worker core driven by plain threads, for sync programs (no event loop).

Every service of :mod:`.services` runs on a thread of its own (the calling thread is the leading
fetcher) and waits by blocking: a database call on its lane, a :class:`threading.Event` per
signal. Each step of a service (the code between two effects) runs under one lock, as do the
handler threads' calls into the core, so the core's state needs no other synchronisation.
``threads`` handler threads run ``def`` handlers; ``async def`` handlers run on one event loop
thread of the worker's own. Job deadlines and delayed wake-ups share one timer thread.
"""

from __future__ import annotations

import contextlib
import queue as queues_module
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from pgq_sa._decisions import Outcome
from pgq_sa._job import Job
from pgq_sa._notifications import ListenConnection
from pgq_sa._ops.worker import Claimed
from pgq_sa._pgbouncer import check_engine
from pgq_sa._queue import Queue
from pgq_sa._schema import notify_channel
from pgq_sa._tasks import TaskDefinition
from pgq_sa._timers import TimerThread
from pgq_sa._worker import effects, services, transactional
from pgq_sa._worker.base import Worker
from pgq_sa._worker.core import fetcher_count, timeout_of
from pgq_sa._worker.effects import Signal
from pgq_sa._worker.handlers import failed_around, run_async_handler
from pgq_sa._worker.lanes import SyncDatabase, interrupt_claims, open_lanes, sync_engine
from pgq_sa._worker.options import worker_options

T = TypeVar("T")


class ThreadWorker(Worker):
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
        statement_timeout: float = 10.0,
        name: str | None = None,
        handle_signals: bool = True,
    ) -> None:
        options = worker_options(
            queue,
            capacity=threads,
            capacity_name="threads",
            batch_size=batch_size,
            queues=queues,
            heartbeat_interval=heartbeat_interval,
            lease_timeout=lease_timeout,
            poll_interval=poll_interval,
            shutdown_timeout=shutdown_timeout,
            statement_timeout=statement_timeout,
        )
        transactional.refuse_async(options, "ThreadWorker")
        super().__init__(queue, options, name, handle_signals)
        self._bind = bind
        self._engine, self._owns_engine = sync_engine(bind)

    def run(self, *, until_empty: bool = False) -> None:
        """Work until stopped; with ``until_empty`` return once nothing due is left."""
        try:
            with contextlib.ExitStack() as stack:
                portal = None
                if any(d.is_async for d in self.options.tasks.values()):
                    portal = stack.enter_context(start_blocking_portal("asyncio"))
                self._driver = _Threads(self, self._engine, portal, until_empty)
                stack.enter_context(self._signals(self._driver))
                self._driver.run()
        finally:  # also when it gave up before registering
            if self._owns_engine:
                self._engine.dispose()

    @contextlib.contextmanager
    def _signals(self, driver: _Threads) -> Iterator[None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: Any) -> None:
            # The main thread may hold the core's lock right now: stop from another thread.
            force = self._signalled(signum)
            threading.Thread(target=driver.stop, kwargs={"force": force}, daemon=True).start()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Threads:
    """One run of a ThreadWorker: the core, its threads, and how they wait (the Runtime)."""

    def __init__(
        self, worker: ThreadWorker, engine: Engine, portal: BlockingPortal | None, until_empty: bool
    ) -> None:
        self._worker = worker
        self._portal = portal
        self._lock = threading.Lock()
        self._events = {signal: threading.Event() for signal in Signal}
        self._timers = TimerThread()
        self._work: queues_module.SimpleQueue[Claimed | None] = queues_module.SimpleQueue()
        self._database = SyncDatabase(engine, worker.options.statement_timeout)
        self.core = worker._new_core(self, until_empty, engine.url)
        self._fetchers = fetcher_count(worker.options)
        self._lanes: dict[tuple[effects.Lane, int], Any] = {}  # opened once registered
        self._listen = ListenConnection(engine.url, [notify_channel(worker.queue.schema)])
        self._jobs = transactional.SyncJobs.for_engine(
            engine, worker.options, worker.queue.statements, worker.identity.id
        )
        self._handlers: list[threading.Thread] = []
        self._services: dict[str, threading.Thread] = {}

    # --- Runtime (called with the lock held) ---------------------------------------------------

    def set(self, signal: Signal) -> None:
        self._events[signal].set()
        if signal is Signal.CLOSING:  # the listener does not sit out its wait
            self._listen.interrupt()

    def clear(self, signal: Signal) -> None:
        self._events[signal].clear()

    def call_later(self, delay: float, signal: Signal) -> None:
        self._timers.call_later(delay, self._events[signal].set)

    def dispatch(self, items: list[Claimed]) -> None:
        for item in items:
            self._work.put(item)

    def interrupt(self, job: Job) -> None:
        """Nothing to do: a ``def`` handler sees ``job.cancelled``; an ``async def`` one on the
        portal was cancelled by ``job.request_cancel`` (see handlers.run_async_handler)."""

    # --- running -------------------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        with self._lock:
            self.core.begin_stop(force=force)
        interrupt_claims(self._lanes)

    def run(self) -> None:
        core, options = self.core, self._worker.options
        self._timers.start()
        try:
            if not self._drive(services.register(core)):
                return
            self._worker._refuse_transaction_pooling(check_engine(self._database.engine))
            self._lanes = open_lanes(
                self._database, self._fetchers, options.heartbeat_deadline, core.durability
            )
            self._worker._started(
                "threads",
                self._database.describe(),
                self._database.engine.dialect.driver,
                self._worker._bind,
            )
            for number in range(options.capacity):
                self._handlers.append(self._start(self._handle_jobs, f"handler-{number}"))
            for name, service in services.background(core):
                self._services[name] = self._start(partial(self._serve, service(core)), name)
            followers = [
                self._start(partial(self._serve, services.fetcher(core, number)), "fetcher")
                for number in range(1, self._fetchers)
            ]
            try:
                self._drive(services.fetcher(core, 0))
            finally:
                self.stop()
                for follower in followers:  # they use the lanes closed at shutdown
                    follower.join()
                self._drive(services.shutdown(core))
        finally:
            self._timers.stop()
            self._close_lanes()

    def _start(self, target: Any, role: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"pgq_sa-{role}", daemon=True)
        thread.start()
        return thread

    def _serve(self, service: effects.Service[None]) -> None:
        try:
            self._drive(service)
        except Exception:  # a service must never die silently
            services.log.exception("worker service failed; stopping the worker")
            self.stop()

    def _drive(self, service: effects.Service[T]) -> T:
        """Run one service to its end: each step under the lock, each effect outside it."""
        sent: Any = None
        error: BaseException | None = None
        while True:
            with self._lock:
                done, value = services.advance(service, sent, error)
            if done:
                return value  # type: ignore[no-any-return]
            sent, error = None, None
            try:
                sent = self._perform(value)
            except services.DATABASE_ERRORS as failure:
                error = failure

    def _perform(self, effect: effects.Effect) -> Any:
        match effect:
            case effects.Call(operation, lane, number, deadline):
                if lane is effects.Lane.POOL:
                    return self._database.run(operation, deadline)
                return self._lanes[lane, number].run(operation, deadline)
            case effects.Wait(signal, timeout):
                return self._events[signal].wait(timeout)
            case effects.ListenConnect():
                return self._listen.connect()
            case effects.ListenWait(timeout):
                return self._listen.wait(timeout)
            case effects.ListenPing(timeout):
                return self._listen.ping(timeout)
            case effects.ListenClose():
                return self._listen.close()
            case effects.Shutdown(step):
                return self._shut_down(step)
        raise AssertionError(f"unknown effect {effect!r}")  # pragma: no cover

    def _shut_down(self, step: effects.ShutdownStep) -> None:
        if step is effects.ShutdownStep.STOP_RUNNERS:
            for _ in self._handlers:
                self._work.put(None)
        elif step is effects.ShutdownStep.JOIN_COMPLETER:
            completer = self._services["completer"]
            completer.join(self.core.final_deadline)
            if completer.is_alive():  # a write still waiting for its answer: cut it
                self._lanes[effects.Lane.FINISH, 0].interrupt()
                completer.join()
        elif step is effects.ShutdownStep.CLOSE_LANES:
            self._close_lanes()
        elif step is effects.ShutdownStep.JOIN_SERVICES:
            for name, thread in self._services.items():
                if name != "completer":
                    thread.join()
            self._listen.close()
            deadline = time.monotonic() + 1.0  # sync handlers that ignore job.cancelled are
            for thread in self._handlers:  # abandoned (daemon threads); the hand-back was done
                thread.join(max(deadline - time.monotonic(), 0))

    def _close_lanes(self) -> None:
        for lane in self._lanes.values():
            lane.close()

    # --- handler threads -----------------------------------------------------------------------

    def _handle_jobs(self) -> None:
        while (item := self._work.get()) is not None:
            with self._lock:
                definition = self.core.start(item)
            if definition is None:
                continue
            outcome = self._run(item.job, definition, timeout_of(item, definition))
            with self._lock:
                self.core.release(item.job, outcome)

    def _run(self, job: Job, definition: TaskDefinition, timeout: float | None) -> Outcome:
        events, worker_id = self._worker.queue.events, self.core.worker_id
        timer = None
        if timeout:
            timer = self._timers.call_later(timeout, partial(job.request_cancel, "timeout"))
        try:
            if definition.is_async:
                assert self._portal is not None
                outcome = self._portal.call(
                    run_async_handler, definition, job, timeout, events, worker_id
                )
                return self._jobs.commit_steps(definition, job, outcome, worker_id)
            return self._jobs.run(definition, job, timeout, events, worker_id)
        except BaseException as error:  # whatever escapes, the attempt fails; the worker goes on
            return failed_around(job, error)
        finally:
            if timer is not None:
                self._timers.cancel(timer)
