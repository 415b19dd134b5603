"""How a statement reaches the database: the one place that differs between sync and async.

Operations are written once as generators (see :mod:`pgq_sa._ops.producer`): they yield
``(statement, params)`` and are sent back the rows. :func:`run_sync` drives one on a Session,
Connection or Engine; :func:`run_async` drives the same generator on an AsyncSession,
AsyncConnection or AsyncEngine (asyncio), or on a sync Engine in a worker thread (any anyio
backend, trio included). What to send and how to wait stay apart.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, TypeVar, Union

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.engine import URL, Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.sql.expression import Executable

T = TypeVar("T")
# What a producer call takes: a Session (SQLModel's and Flask-SQLAlchemy's scoped session too), a
# Connection or an Engine; the *_async calls an AsyncSession, AsyncConnection or AsyncEngine, or a
# sync Engine (run in a worker thread, on any anyio backend).
SyncBind = Union[Session, Connection, Engine, "scoped_session[Any]"]
AsyncBind = Union[AsyncSession, AsyncConnection, AsyncEngine, Engine]  # noqa: UP007
Params = Union[Mapping[str, Any], None]  # noqa: UP007 - a runtime alias on Python 3.10
Command = tuple[Executable, Params]
Operation = Generator[Command, Sequence[Row[Any]], T]


def url_of(bind: object) -> URL | None:
    """The URL ``bind`` connects to, for messages; None when it cannot tell."""
    try:
        if isinstance(bind, (Session, scoped_session, AsyncSession)):
            bind = bind.get_bind()
        if isinstance(bind, (Engine, Connection, AsyncEngine, AsyncConnection)):
            return bind.engine.url
    except Exception:  # an unbound session: no URL to name
        return None
    return None


def _rows(result: Result[Any]) -> Sequence[Row[Any]]:
    return result.all() if result.returns_rows else ()  # type: ignore[attr-defined]


def _drive_sync(executor: Session | Connection | scoped_session[Any], operation: Operation[T]) -> T:
    try:
        statement, params = next(operation)
        while True:
            rows = _rows(executor.execute(statement, params))
            statement, params = operation.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def run_sync(bind: object, operation: Operation[T]) -> T:
    """Run ``operation`` on a sync bind: inside the caller's transaction, or committed (Engine)."""
    if isinstance(bind, (Session, Connection, scoped_session)):
        return _drive_sync(bind, operation)
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            return _drive_sync(connection, operation)
    operation.close()
    if isinstance(bind, (AsyncSession, AsyncConnection, AsyncEngine)):
        raise TypeError(f"{type(bind).__name__} is async: use the *_async method and await it")
    raise TypeError(
        "bind must be a SQLAlchemy Session, Connection or Engine, got " + type(bind).__name__
    )


async def _drive_async(executor: AsyncSession | AsyncConnection, operation: Operation[T]) -> T:
    try:
        statement, params = next(operation)
        while True:
            rows = _rows(await executor.execute(statement, params))
            statement, params = operation.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(bind: object, operation: Operation[T]) -> T:
    """Run ``operation`` on an async bind, or on a sync Engine in a worker thread."""
    if isinstance(bind, (AsyncSession, AsyncConnection)):
        return await _drive_async(bind, operation)
    if isinstance(bind, AsyncEngine):
        async with bind.begin() as connection:
            return await _drive_async(connection, operation)
    if isinstance(bind, Engine):
        import anyio.to_thread

        return await anyio.to_thread.run_sync(run_sync, bind, operation)
    operation.close()
    if isinstance(bind, (Session, Connection)):
        raise TypeError(
            f"{type(bind).__name__} is sync: call the method without _async, or pass an "
            "AsyncSession, AsyncConnection, AsyncEngine or a sync Engine (run in a thread)"
        )
    raise TypeError(
        "bind must be an AsyncSession, AsyncConnection, AsyncEngine or Engine, got "
        + type(bind).__name__
    )
