"""The async worker's hot statements on asyncpg: the same Core statements, prepared on the driver.

The claim and finish statements run thousands of times a second on two connections. Through
``AsyncConnection.execute`` each run costs ~0.1 ms of Python beyond the driver's own work (the
greenlet hop, the compiled-cache lookup, parameter and row processing): on a busy worker that is
a quarter of the worker's CPU, and the slower turnaround also leaves PostgreSQL fewer commits to
flush together. Here each statement is compiled once by SQLAlchemy for the engine's dialect
(``positiontup``, the bind processors of its parameter types), prepared once per connection on
the asyncpg connection underneath, and run with ``PreparedStatement.fetch``.

What comes back is the same data: the rows are asyncpg ``Record`` objects, read by position like
SQLAlchemy rows (the operations run here read rows by position only), and JSON columns arrive
decoded by the codecs SQLAlchemy's asyncpg dialect installs on every connection. Driver errors
are raised as ``sqlalchemy.exc.DBAPIError`` so the worker's retry logic treats both paths alike.
Any other driver, and every other statement, goes through SQLAlchemy as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.sql.expression import Executable

from pgq_sa._errors import DRIVER_ERRORS
from pgq_sa._ops.drive import Operation, T


def supported(dialect: Dialect) -> bool:
    """Is this an asyncpg dialect (the only driver this path knows)?"""
    return dialect.driver == "asyncpg"


@dataclass(frozen=True)
class CompiledStatement:
    """One Core statement compiled for one dialect: SQL text and how to order its parameters."""

    compiled: Compiled
    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    @classmethod
    def compile(cls, statement: Executable, dialect: Dialect) -> CompiledStatement:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        binds = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()
        )
        return cls(compiled, compiled.string, binds)

    def arguments(self, params: Any) -> list[Any]:
        values = self.compiled.construct_params(params) or {}
        return [
            values[name] if process is None else process(values[name])
            for name, process in self.binds
        ]


class StatementCache:
    """Compiled statements of one dialect, shared by every lane of one worker."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._compiled: dict[Executable, CompiledStatement] = {}

    def get(self, statement: Executable) -> CompiledStatement:
        found = self._compiled.get(statement)
        if found is None:
            found = self._compiled[statement] = CompiledStatement.compile(statement, self.dialect)
        return found


class PreparedConnection:
    """One lane's asyncpg connection and the statements prepared on it."""

    def __init__(self, connection: AsyncConnection, statements: StatementCache) -> None:
        self._connection = connection
        self._statements = statements
        self._driver: Any = None
        self._prepared: dict[str, Any] = {}

    async def run(self, operation: Operation[T]) -> T:
        """Drive ``operation`` (autocommit: each statement commits on its own)."""
        try:
            statement, params = next(operation)
            while True:
                rows = await self._fetch(statement, params)
                statement, params = operation.send(rows)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _fetch(self, statement: Executable, params: Any) -> Sequence[Any]:
        compiled = self._statements.get(statement)
        arguments = compiled.arguments(params)
        try:
            prepared = self._prepared.get(compiled.sql)
            if prepared is None:
                if self._driver is None:
                    raw = await self._connection.get_raw_connection()
                    self._driver = raw.driver_connection
                prepared = self._prepared[compiled.sql] = await self._driver.prepare(compiled.sql)
            return await prepared.fetch(*arguments)  # type: ignore[no-any-return]
        except Exception as error:
            if _is_driver_error(error):
                raise DBAPIError(compiled.sql, None, error) from error
            raise


def _is_driver_error(error: Exception) -> bool:
    """Is this asyncpg's own error (``DRIVER_ERRORS``)? Its ``InternalClientError`` included:
    asyncpg raises it for a call on a connection lost during an earlier operation ("another
    operation is in progress"), which must be retried on a fresh connection like any lost
    connection."""
    import asyncpg

    return isinstance(error, (*DRIVER_ERRORS, asyncpg.InternalClientError))
