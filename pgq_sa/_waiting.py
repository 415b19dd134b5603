"""``Queue.wait`` and ``Queue.wait_workflow``: block (or await) until a job, or every step of a
workflow, has finished.

A waiter LISTENs on the schema's ``finished`` channel, then flags the job ``awaited`` (its own
committed UPDATE), then reads it. The statement that finishes an awaited job announces its id
there (finishes nobody waits for send no NOTIFY: each one would serialise commits). The waiter
re-reads the job when its id (or an overflowing "some jobs") is announced, and every
``POLL_INTERVAL`` in case a notification was missed (the listener lost its connection, say).

A workflow waiter flags every unfinished step the same way (steps added at run time inherit the
flag of the step adding them), then keeps the set of steps not announced yet: it reads the
workflow again only once that set is empty (a fan-in of 10,000 steps is not read 10,000 times),
or when an overflowing message or a poll interval says it may have missed something.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from pgq_sa._job import JobInfo
from pgq_sa._notifications import ListenConnection, Message
from pgq_sa._ops import producer as operations
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import Operation, run_async, run_sync
from pgq_sa._schema import finished_channel
from pgq_sa._sql import Statements
from pgq_sa._workflow import WorkflowInfo

T = TypeVar("T")
POLL_INTERVAL = 1.0
log = logging.getLogger("pgq_sa.wait")


def _sync_engine(bind: object) -> Engine:
    if isinstance(bind, Engine):
        return bind
    if isinstance(bind, Connection):
        return bind.engine
    if isinstance(bind, Session):
        engine = bind.get_bind()
        return engine if isinstance(engine, Engine) else engine.engine
    raise TypeError(f"wait() needs a Session, Connection or Engine, got {type(bind).__name__}")


def _async_engine(bind: object) -> AsyncEngine | Engine:
    if isinstance(bind, (AsyncEngine, Engine)):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    if isinstance(bind, AsyncSession) and bind.bind is not None:
        engine = bind.bind
        return engine if isinstance(engine, AsyncEngine) else engine.engine
    raise TypeError(
        "wait_async() needs an AsyncSession, AsyncConnection, AsyncEngine or Engine, got "
        + type(bind).__name__
    )


def _read_committed(engine: Engine | AsyncEngine) -> Engine | AsyncEngine:
    """The flag is one UPDATE of its own: under READ COMMITTED it waits for a finishing statement
    holding the row instead of failing with a serialization error, whatever the engine's level."""
    return engine.execution_options(isolation_level="READ COMMITTED")


def _cannot_mark(watch: _Watch[Any], error: DBAPIError) -> None:
    """Flagging failed (a producer role granted before migration step 0003 lacks UPDATE on
    ``awaited``, say): wait by polling, once a second, and say how to fix it."""
    log.warning(
        "wait(%s): cannot flag %s awaited (%s); falling back to polling every %gs. "
        "Re-run `pgq-sa db grant` for this role after upgrading the schema.",
        watch.key,
        watch.flagged,
        str(error.orig or error).strip().splitlines()[0],
        POLL_INTERVAL,
    )


class _Watch(Generic[T]):
    """What one waiter waits for: how to flag it, how to read it, which messages matter."""

    flagged = "the job"

    def __init__(self, statements: Statements, key: int) -> None:
        self.statements, self.key = statements, key

    def mark(self) -> Operation[None]:
        raise NotImplementedError

    def read(self) -> Operation[T | None]:
        """The finished thing, or None while it is not; LookupError when it does not exist."""
        raise NotImplementedError

    def keep_waiting(self, messages: list[Message]) -> bool:
        """False once these announcements make reading again worthwhile."""
        raise NotImplementedError

    def timed_out(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"{self.what} did not finish within {timeout:g}s")

    @property
    def what(self) -> str:
        return f"job {self.key}"


class _JobWatch(_Watch[JobInfo]):
    def mark(self) -> Operation[None]:
        return operations.mark_awaited(self.statements, self.key)

    def read(self) -> Operation[JobInfo | None]:
        info = yield from operations.get(self.statements, self.key)
        if info is None:
            raise LookupError(f"no job with id {self.key}")
        return info if info.finished else None

    def keep_waiting(self, messages: list[Message]) -> bool:
        return not any(m.finished_ids is None or self.key in m.finished_ids for m in messages)


class _WorkflowWatch(_Watch[WorkflowInfo]):
    """Steps not announced yet are kept in ``remaining``; the workflow is read again once none
    is left (or a message overflowed, or a poll interval passed)."""

    flagged = "the workflow's steps"

    def __init__(self, statements: Statements, key: int) -> None:
        super().__init__(statements, key)
        self.remaining: set[int] = set()

    @property
    def what(self) -> str:
        return f"workflow {self.key}"

    def mark(self) -> Operation[None]:
        return wf_operations.mark_awaited(self.statements, self.key)

    def read(self) -> Operation[WorkflowInfo | None]:
        self.remaining = yield from wf_operations.unfinished_steps(self.statements, self.key)
        if self.remaining:
            return None
        info = yield from wf_operations.get_workflow(self.statements, self.key)
        if info is None:
            raise LookupError(f"no workflow with id {self.key}")
        return info if info.finished else None

    def keep_waiting(self, messages: list[Message]) -> bool:
        for message in messages:
            if message.finished_ids is None:
                return False
            self.remaining -= message.finished_ids
        return bool(self.remaining)


def _listener(engine: Engine | AsyncEngine, statements: Statements) -> ListenConnection:
    return ListenConnection(engine.url, [finished_channel(statements.tables.schema)])


def _wait_sync(bind: Any, watch: _Watch[T], timeout: float | None) -> T:
    engine = _sync_engine(bind)
    deadline = None if timeout is None else time.monotonic() + timeout
    listener = _listener(engine, watch.statements)
    try:
        with contextlib.suppress(psycopg.Error):  # polling alone still works
            listener.connect()
        if listener.connected:
            try:
                run_sync(_read_committed(engine), watch.mark())
            except DBAPIError as error:
                _cannot_mark(watch, error)
        while True:
            found = run_sync(engine, watch.read())
            if found is not None:
                return found
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise watch.timed_out(timeout)
                pause = POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining)
                if not listener.connected:
                    time.sleep(pause)
                    break
                try:
                    messages = listener.wait(pause)
                except psycopg.Error:
                    listener.close()
                    break
                if not messages or not watch.keep_waiting(messages):
                    break
    finally:
        listener.close()


async def _wait_async(bind: Any, watch: _Watch[T], timeout: float | None) -> T:
    engine = _async_engine(bind)
    listener = _listener(engine, watch.statements)
    try:
        with contextlib.suppress(psycopg.Error):  # polling alone still works
            await anyio.to_thread.run_sync(listener.connect)
        with anyio.fail_after(timeout):
            if listener.connected:
                try:
                    await run_async(_read_committed(engine), watch.mark())
                except DBAPIError as error:
                    _cannot_mark(watch, error)
            while True:
                found = await run_async(engine, watch.read())
                if found is not None:
                    return found
                while True:
                    if not listener.connected:
                        await anyio.sleep(POLL_INTERVAL)
                        break
                    try:
                        messages = await listener.wait_async(POLL_INTERVAL)
                    except psycopg.Error:
                        listener.close()
                        break
                    if not messages or not watch.keep_waiting(messages):
                        break
    finally:
        listener.close()


def wait(statements: Statements, bind: Any, job_id: int, timeout: float | None) -> JobInfo:
    return _wait_sync(bind, _JobWatch(statements, job_id), timeout)


async def wait_async(
    statements: Statements, bind: Any, job_id: int, timeout: float | None
) -> JobInfo:
    return await _wait_async(bind, _JobWatch(statements, job_id), timeout)


def wait_workflow(
    statements: Statements, bind: Any, workflow_id: int, timeout: float | None
) -> WorkflowInfo:
    return _wait_sync(bind, _WorkflowWatch(statements, workflow_id), timeout)


async def wait_workflow_async(
    statements: Statements, bind: Any, workflow_id: int, timeout: float | None
) -> WorkflowInfo:
    return await _wait_async(bind, _WorkflowWatch(statements, workflow_id), timeout)
