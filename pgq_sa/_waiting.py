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
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from pgq_sa._job import JobInfo
from pgq_sa._ops import producer as operations
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import run_async, run_sync
from pgq_sa._schema import finished_channel
from pgq_sa._sql import Statements
from pgq_sa._worker.listener import ListenConnection, Message
from pgq_sa._workflow import WorkflowInfo

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


def _cannot_mark(job_id: int, error: DBAPIError) -> None:
    """Flagging failed (a producer role granted before migration step 0003 lacks UPDATE on
    ``awaited``, say): wait by polling, once a second, and say how to fix it."""
    log.warning(
        "wait(%s): cannot flag the job awaited (%s); falling back to polling every %gs. "
        "Re-run `pgq-sa db grant` for this role after upgrading the schema.",
        job_id,
        str(error.orig or error).strip().splitlines()[0],
        POLL_INTERVAL,
    )


def _mentions(messages: list[Message], job_id: int) -> bool:
    return any(m.finished_ids is None or job_id in m.finished_ids for m in messages)


def _finished(info: JobInfo | None, job_id: int) -> bool:
    if info is None:
        raise LookupError(f"no job with id {job_id}")
    return info.finished


def wait(statements: Statements, bind: Any, job_id: int, timeout: float | None) -> JobInfo:
    engine = _sync_engine(bind)
    deadline = None if timeout is None else time.monotonic() + timeout
    listener = ListenConnection(engine.url, [finished_channel(statements.tables.schema)])
    try:
        with contextlib.suppress(psycopg.Error):  # polling alone still works
            listener.connect()
        if listener.connected:
            try:
                run_sync(_read_committed(engine), operations.mark_awaited(statements, job_id))
            except DBAPIError as error:
                _cannot_mark(job_id, error)
        while True:
            info = run_sync(engine, operations.get(statements, job_id))
            if _finished(info, job_id):
                assert info is not None
                return info
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout:g}s")
                pause = POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining)
                if not listener.connected:
                    time.sleep(pause)
                    break
                try:
                    messages = listener.wait(pause)
                except psycopg.Error:
                    listener.close()
                    break
                if not messages or _mentions(messages, job_id):
                    break
    finally:
        listener.close()


async def wait_async(
    statements: Statements, bind: Any, job_id: int, timeout: float | None
) -> JobInfo:
    engine = _async_engine(bind)
    listener = ListenConnection(engine.url, [finished_channel(statements.tables.schema)])
    try:
        with contextlib.suppress(psycopg.Error):  # polling alone still works
            await anyio.to_thread.run_sync(listener.connect)
        with anyio.fail_after(timeout):
            if listener.connected:
                try:
                    await run_async(
                        _read_committed(engine), operations.mark_awaited(statements, job_id)
                    )
                except DBAPIError as error:
                    _cannot_mark(job_id, error)
            while True:
                info = await run_async(engine, operations.get(statements, job_id))
                if _finished(info, job_id):
                    assert info is not None
                    return info
                while True:
                    if not listener.connected:
                        await anyio.sleep(POLL_INTERVAL)
                        break
                    try:
                        messages = await listener.wait_async(POLL_INTERVAL)
                    except psycopg.Error:
                        listener.close()
                        break
                    if not messages or _mentions(messages, job_id):
                        break
    finally:
        listener.close()


def _pending(messages: list[Message], remaining: set[int]) -> bool:
    """Drop the announced steps from ``remaining``; False once it is worth reading again."""
    for message in messages:
        if message.finished_ids is None:
            return False
        remaining -= message.finished_ids
    return bool(remaining)


def _workflow_done(info: WorkflowInfo | None, workflow_id: int) -> bool:
    if info is None:
        raise LookupError(f"no workflow with id {workflow_id}")
    return info.finished


def wait_workflow(
    statements: Statements, bind: Any, workflow_id: int, timeout: float | None
) -> WorkflowInfo:
    engine = _sync_engine(bind)
    deadline = None if timeout is None else time.monotonic() + timeout
    listener = ListenConnection(engine.url, [finished_channel(statements.tables.schema)])
    try:
        with contextlib.suppress(psycopg.Error):  # polling alone still works
            listener.connect()
        if listener.connected:
            try:
                marked = wf_operations.mark_awaited(statements, workflow_id)
                run_sync(_read_committed(engine), marked)
            except DBAPIError as error:
                _cannot_mark(workflow_id, error)
        while True:
            remaining = run_sync(engine, wf_operations.unfinished_steps(statements, workflow_id))
            if not remaining:
                info = run_sync(engine, wf_operations.get_workflow(statements, workflow_id))
                if _workflow_done(info, workflow_id):
                    assert info is not None
                    return info
                continue
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"workflow {workflow_id} did not finish within {timeout:g}s")
                pause = POLL_INTERVAL if left is None else min(POLL_INTERVAL, left)
                if not listener.connected:
                    time.sleep(pause)
                    break
                try:
                    messages = listener.wait(pause)
                except psycopg.Error:
                    listener.close()
                    break
                if not messages or not _pending(messages, remaining):
                    break
    finally:
        listener.close()


async def wait_workflow_async(
    statements: Statements, bind: Any, workflow_id: int, timeout: float | None
) -> WorkflowInfo:
    engine = _async_engine(bind)
    listener = ListenConnection(engine.url, [finished_channel(statements.tables.schema)])
    try:
        with contextlib.suppress(psycopg.Error):  # polling alone still works
            await anyio.to_thread.run_sync(listener.connect)
        with anyio.fail_after(timeout):
            if listener.connected:
                try:
                    marked = wf_operations.mark_awaited(statements, workflow_id)
                    await run_async(_read_committed(engine), marked)
                except DBAPIError as error:
                    _cannot_mark(workflow_id, error)
            while True:
                unfinished = wf_operations.unfinished_steps(statements, workflow_id)
                remaining = await run_async(engine, unfinished)
                if not remaining:
                    read = wf_operations.get_workflow(statements, workflow_id)
                    info = await run_async(engine, read)
                    if _workflow_done(info, workflow_id):
                        assert info is not None
                        return info
                    continue
                while True:
                    if not listener.connected:
                        await anyio.sleep(POLL_INTERVAL)
                        break
                    try:
                        messages = await listener.wait_async(POLL_INTERVAL)
                    except psycopg.Error:
                        listener.close()
                        break
                    if not messages or not _pending(messages, remaining):
                        break
    finally:
        listener.close()
