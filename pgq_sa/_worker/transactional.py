"""Transactional tasks: a handler's database effects and its job's completion commit together.

For a task declared with ``transactional=True`` the worker opens a transaction on a connection of
its engine, hands it to the handler as ``job.connection``, and when the handler succeeds writes
the job's completion with the lease-guarded ``finish`` statement *inside that transaction*. If the
guard matches nothing (the lease was lost: the job was rescued, handed back or finished
elsewhere) the transaction is rolled back, so the late attempt's effects are discarded. Any other
outcome (an exception, ``Retry``, a timeout, a cancellation) rolls back too and is recorded by the
worker's completer as usual. An outcome this module wrote is marked ``written``, so the completer
only does its bookkeeping for it.

A transactional job holds one pooled connection while its handler runs. When job connections
share the worker's pool, at most the pool's size minus what the worker's own components need run
at once (the others wait for a connection), so heartbeats and claims are never starved.

Non-transactional tasks pass straight through to :mod:`.handlers`, except a workflow step that
added steps with ``job.add_to_workflow``: see the workflow hook below.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool, QueuePool

from pgq_sa import _decisions as decisions
from pgq_sa._config import make_engine
from pgq_sa._decisions import Outcome
from pgq_sa._errors import TransactionEnded
from pgq_sa._events import EventHub
from pgq_sa._job import Job
from pgq_sa._ops import worker as protocol
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import Operation, run_async, run_sync
from pgq_sa._sql import Statements
from pgq_sa._tasks import TaskDefinition
from pgq_sa._worker.core import fetcher_count
from pgq_sa._worker.handlers import run_async_handler, run_sync_handler
from pgq_sa._worker.lanes import AsyncDatabase, AsyncioDatabase
from pgq_sa._worker.options import WorkerOptions

log = logging.getLogger("pgq_sa.worker")

# Connections a worker's own components may hold at once besides its fetch lanes: the finish
# lane, heartbeat, maintenance, scheduler, the listener's catch-up read and a hand-back.
_OWN_CONNECTIONS = 6


def connection_slots(pool: Pool, options: WorkerOptions) -> int:
    """How many transactional jobs may hold a connection of ``pool`` at once, leaving the worker's
    own components theirs: the pool's size plus overflow, minus their need, at least one."""
    if not isinstance(pool, QueuePool):
        return options.capacity
    overflow = int(getattr(pool, "_max_overflow", -1))
    if overflow < 0:  # unlimited overflow
        return options.capacity
    reserved = 2 * fetcher_count(options) + _OWN_CONNECTIONS
    return max(1, min(options.capacity, pool.size() + overflow - reserved))


def _transactional(tasks: Iterable[TaskDefinition], *, is_async: bool) -> list[str]:
    return sorted(d.name for d in tasks if d.transactional and d.is_async == is_async)


def refuse_async(options: WorkerOptions, where: str) -> None:
    """Raise before anything connects if ``async def`` transactional tasks cannot run here."""
    names = _transactional(options.tasks.values(), is_async=True)
    if names:
        raise ValueError(
            f"transactional async def tasks ({', '.join(names)}) need an AsyncConnection, which "
            f"{where} cannot give them; run them on AsyncWorker under asyncio with a URL or an "
            "AsyncEngine, or make their handlers plain def functions"
        )


def _failed_around(job: Job, error: Exception) -> Outcome:
    """The transaction itself failed (connect, commit, the finish statement): the attempt fails
    and is retried like any failure; whatever the handler wrote was not committed."""
    log.warning("job %s attempt %s: its transaction failed (%s)", job.id, job.attempt, error)
    return decisions.errored(job.id, job.attempt, job.max_attempts, error)


def _ended_by_handler(job: Job) -> Outcome:
    error = TransactionEnded(
        "the handler committed or rolled back job.connection itself; a transactional task must "
        "leave that to the worker (use begin_nested() for savepoints)"
    )
    return decisions.errored(job.id, job.attempt, job.max_attempts, error)


def _lease_lost(job: Job, outcome: Outcome) -> Outcome:
    log.warning(
        "job %s attempt %s: lease lost; its transaction was rolled back, the handler's effects "
        "discarded",
        job.id,
        job.attempt,
    )
    return outcome._replace(written=True)


# --- workflow hook (issue 15) -----------------------------------------------------------------
# Steps a handler added with job.add_to_workflow commit in ONE transaction with its success,
# under its lease (pgq_sa._ops.workflows.finish_with_steps: insert the steps and edges, then the
# lease-guarded finish; the transaction is rolled back when the lease was lost). Transactional
# tasks do it in their own transaction (_finish); other tasks in one opened here
# (SyncJobs.commit_steps / AsyncJobs.commit_steps), which marks the outcome ``written`` so the
# completer only does its bookkeeping. To port into the new worker core: pass every outcome of a
# job whose ``job._steps`` is set through commit_steps before the completer sees it.


def _finish(
    statements: Statements,
    worker_id: uuid.UUID,
    definition: TaskDefinition,
    job: Job,
    outcome: Outcome,
) -> Operation[protocol.Finished]:
    """The finish of one successful outcome, with the steps its handler added, if any (they are
    checked against the queue here, before anything is sent)."""
    if not job._steps:
        return protocol.finish(statements, worker_id, [outcome])
    steps = definition.owner._added_steps(job._steps)
    return wf_operations.finish_with_steps(statements, worker_id, job.id, outcome, steps)


def _with_steps(job: Job, outcome: Outcome) -> bool:
    """Has this outcome steps to commit? Those of an attempt that did not succeed are dropped."""
    if not job._steps:
        return False
    if outcome.state != "succeeded" or outcome.written:
        log.info(
            "job %s attempt %s: its %d added steps are dropped with its %s outcome",
            job.id,
            job.attempt,
            len(job._steps),
            outcome.state,
        )
        return False
    return True


# --- end of the workflow hook's helpers --------------------------------------------------------


class SyncJobs:
    """Run ``def`` handlers; transactional ones inside a transaction of ``engine``."""

    def __init__(
        self,
        engine: Engine | None,
        statements: Statements,
        worker_id: uuid.UUID,
        slots: int,
        *,
        owned: bool = False,
        steps_bind: Engine | Any = None,
    ) -> None:
        self._engine = engine
        self._statements = statements
        self._worker_id = worker_id
        self._slots = threading.BoundedSemaphore(slots)
        self._owned = owned
        # Workflow hook: where steps added by non-transactional tasks are written (an Engine, or
        # a URL for one made on first use).
        self._steps_bind: Any = steps_bind if steps_bind is not None else engine
        self._steps_lock = threading.Lock()
        self._owned_steps = False

    @classmethod
    def for_engine(
        cls, engine: Engine, options: WorkerOptions, statements: Statements, worker_id: uuid.UUID
    ) -> SyncJobs:
        """Job connections from the worker's own engine, capped to leave its components room."""
        if not _transactional(options.tasks.values(), is_async=False):
            return cls(None, statements, worker_id, 1, steps_bind=engine)
        slots = connection_slots(engine.pool, options)
        if slots < options.capacity:
            log.info(
                "at most %d transactional jobs run at once: the engine's pool holds no more "
                "connections beside the worker's own (enlarge pool_size to run more)",
                slots,
            )
        return cls(engine, statements, worker_id, slots)

    @classmethod
    def with_own_engine(
        cls, url: Any, options: WorkerOptions, statements: Statements, worker_id: uuid.UUID
    ) -> SyncJobs:
        """Job connections from a psycopg engine of their own (the async worker on asyncio)."""
        if not _transactional(options.tasks.values(), is_async=False):
            return cls(None, statements, worker_id, 1, steps_bind=url)
        size = min(options.capacity, 5)
        engine = make_engine(url, pool_size=size, max_overflow=options.capacity - size)
        return cls(engine, statements, worker_id, options.capacity, owned=True)

    def run(
        self,
        definition: TaskDefinition,
        job: Job,
        timeout: float | None,
        events: EventHub | None = None,
        worker_id: uuid.UUID | None = None,
    ) -> Outcome:
        if not definition.transactional:
            outcome = run_sync_handler(definition, job, timeout, events, worker_id)
            return self.commit_steps(definition, job, outcome, worker_id)  # workflow hook
        assert self._engine is not None
        with self._slots:
            try:
                with self._engine.connect() as connection:
                    return self._attempt(connection, definition, job, timeout, events, worker_id)
            except Exception as error:
                return _failed_around(job, error)

    def _attempt(
        self,
        connection: Connection,
        definition: TaskDefinition,
        job: Job,
        timeout: float | None,
        events: EventHub | None,
        worker_id: uuid.UUID | None,
    ) -> Outcome:
        worker_id = worker_id or self._worker_id
        transaction = connection.begin()
        job._connection = connection
        try:
            outcome = run_sync_handler(definition, job, timeout, events, worker_id)
        finally:
            job._connection = None
        ended = outcome.state == "succeeded" and not transaction.is_active
        if outcome.state != "succeeded" or ended:
            _discard(connection)
            return _ended_by_handler(job) if ended else outcome
        finish = _finish(self._statements, worker_id, definition, job, outcome)
        if run_sync(connection, finish).lost:
            transaction.rollback()
            return _lease_lost(job, outcome)
        transaction.commit()
        return outcome._replace(written=True)

    def commit_steps(
        self,
        definition: TaskDefinition,
        job: Job,
        outcome: Outcome,
        worker_id: uuid.UUID | None = None,
    ) -> Outcome:
        """Workflow hook: write the steps ``job`` added, and its success, in one transaction
        (any other outcome passes through, its steps dropped)."""
        if not _with_steps(job, outcome):
            return outcome
        try:
            finish = _finish(
                self._statements, worker_id or self._worker_id, definition, job, outcome
            )
            with self._engine_for_steps().connect() as connection:
                transaction = connection.begin()
                if run_sync(connection, finish).lost:
                    transaction.rollback()
                    return _lease_lost(job, outcome)
                transaction.commit()
        except Exception as error:
            return _failed_around(job, error)
        return outcome._replace(written=True)

    def _engine_for_steps(self) -> Engine:
        with self._steps_lock:
            if not isinstance(self._steps_bind, Engine):  # a URL: the engine, on first use
                self._steps_bind = make_engine(self._steps_bind, pool_size=2)
                self._owned_steps = True
            engine: Engine = self._steps_bind
            return engine

    def close(self) -> None:
        if self._owned and self._engine is not None:
            self._engine.dispose()
        if self._owned_steps:
            self._steps_bind.dispose()


def _discard(connection: Connection) -> None:
    """Roll back whatever transaction the connection is in; a broken one is invalidated."""
    try:
        connection.rollback()
    except Exception:
        connection.invalidate()


class AsyncJobs:
    """Run handlers on the async worker: ``async def`` ones on the loop (transactional ones in a
    transaction of ``engine``), ``def`` ones through ``sync`` in worker threads."""

    def __init__(
        self,
        engine: AsyncEngine | None,
        sync: SyncJobs,
        statements: Statements,
        worker_id: uuid.UUID,
        slots: int,
        *,
        steps_engine: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        self.sync = sync
        self._statements = statements
        self._worker_id = worker_id
        self._slots = anyio.Semaphore(slots)
        # Workflow hook: where async handlers' added steps are written (None: through ``sync``).
        self._steps_engine = steps_engine

    @classmethod
    def for_worker(
        cls,
        database: AsyncDatabase,
        options: WorkerOptions,
        statements: Statements,
        worker_id: uuid.UUID,
    ) -> AsyncJobs:
        """The runners for an async worker on ``database``; refuses what cannot run there."""
        if not isinstance(database, AsyncioDatabase):  # a sync Engine in threads
            refuse_async(options, "the AsyncWorker on trio or given a sync Engine")
            sync = SyncJobs.for_engine(
                database.transactional_engine, options, statements, worker_id
            )
            return cls(None, sync, statements, worker_id, 1)
        engine = database.transactional_engine
        sync = SyncJobs.with_own_engine(database.url, options, statements, worker_id)
        if not _transactional(options.tasks.values(), is_async=True):
            return cls(None, sync, statements, worker_id, 1, steps_engine=engine)
        slots = connection_slots(engine.pool, options)
        return cls(engine, sync, statements, worker_id, slots, steps_engine=engine)

    def run(
        self,
        definition: TaskDefinition,
        job: Job,
        timeout: float | None,
        events: EventHub | None = None,
        worker_id: uuid.UUID | None = None,
    ) -> Coroutine[Any, Any, Outcome]:
        """The coroutine running the handler (the plain one for other tasks: no extra frame)."""
        if not definition.transactional:
            handler = run_async_handler(definition, job, timeout, events, worker_id)
            if job.workflow_id is None:
                return handler
            return self._then_commit_steps(definition, job, handler, worker_id)  # workflow hook
        return self._run(definition, job, timeout, events, worker_id or self._worker_id)

    async def _then_commit_steps(
        self,
        definition: TaskDefinition,
        job: Job,
        handler: Coroutine[Any, Any, Outcome],
        worker_id: uuid.UUID | None,
    ) -> Outcome:
        return await self.commit_steps(definition, job, await handler, worker_id)

    async def commit_steps(
        self,
        definition: TaskDefinition,
        job: Job,
        outcome: Outcome,
        worker_id: uuid.UUID | None = None,
    ) -> Outcome:
        """Workflow hook: :meth:`SyncJobs.commit_steps` for async handlers."""
        if not _with_steps(job, outcome):
            return outcome
        worker_id = worker_id or self._worker_id
        if self._steps_engine is None:  # a sync engine: in a worker thread
            return await anyio.to_thread.run_sync(
                self.sync.commit_steps, definition, job, outcome, worker_id
            )
        with anyio.CancelScope(shield=True):  # write and commit (or roll back) as one
            try:
                finish = _finish(self._statements, worker_id, definition, job, outcome)
                connection = await self._steps_engine.connect()
                try:
                    transaction = await connection.begin()
                    if (await run_async(connection, finish)).lost:
                        await transaction.rollback()
                        return _lease_lost(job, outcome)
                    await transaction.commit()
                finally:
                    await _close(connection)
            except Exception as error:
                return _failed_around(job, error)
        return outcome._replace(written=True)

    async def _run(
        self,
        definition: TaskDefinition,
        job: Job,
        timeout: float | None,
        events: EventHub | None,
        worker_id: uuid.UUID,
    ) -> Outcome:
        assert self._engine is not None
        async with self._slots:
            try:
                connection = await self._engine.connect()
            except Exception as error:
                return _failed_around(job, error)
            try:
                return await self._attempt(connection, definition, job, timeout, events, worker_id)
            except Exception as error:
                return _failed_around(job, error)
            finally:
                with anyio.CancelScope(shield=True):
                    await _close(connection)

    async def _attempt(
        self,
        connection: AsyncConnection,
        definition: TaskDefinition,
        job: Job,
        timeout: float | None,
        events: EventHub | None,
        worker_id: uuid.UUID,
    ) -> Outcome:
        transaction = await connection.begin()
        job._connection = connection
        try:
            outcome = await run_async_handler(definition, job, timeout, events, worker_id)
        finally:
            job._connection = None
        with anyio.CancelScope(shield=True):  # finish and commit (or roll back) as one
            ended = outcome.state == "succeeded" and not transaction.is_active
            if outcome.state != "succeeded" or ended:
                await _discard_async(connection)
                return _ended_by_handler(job) if ended else outcome
            finish = _finish(self._statements, worker_id, definition, job, outcome)
            if (await run_async(connection, finish)).lost:
                await transaction.rollback()
                return _lease_lost(job, outcome)
            await transaction.commit()
        return outcome._replace(written=True)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.sync.close)


async def _discard_async(connection: AsyncConnection) -> None:
    try:
        await connection.rollback()
    except Exception:
        await connection.invalidate()


async def _close(connection: AsyncConnection) -> None:
    try:
        await connection.close()
    except Exception:
        await connection.invalidate()
