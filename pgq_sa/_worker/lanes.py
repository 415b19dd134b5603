"""How a worker reaches the database: executors for sync, asyncio and threads-under-anyio.

* :class:`SyncDatabase` runs an operation on a sync Engine (the thread worker);
* :class:`AsyncioDatabase` awaits it on an AsyncEngine (the async worker on asyncio);
* :class:`ThreadedDatabase` runs the sync executor in anyio worker threads under a capacity
  limiter (the async worker on trio, or given a sync Engine).

Every statement runs in autocommit: each claim, heartbeat or finish is one statement and one round
trip, committed at once. Busy components (the fetcher, the completer) keep a *lane*: a connection
held between operations, set up once, with session settings that are reset before the
connection goes back to a shared pool:

* ``plan_cache_mode = force_generic_plan``: the drivers prepare the hot statements (asyncpg
  always, psycopg after a few runs), and PostgreSQL would otherwise plan the claim afresh for
  every execution (a custom plan costs more than running it: ~0.8 ms against ~0.4 ms for a claim
  of 10). The statements are written so that their one good plan is the only cheap one: rows
  are reached through ``id = any(ARRAY(...))`` on the primary key;
* both lanes turn off bitmap and sequential scans, and the claim lane sorts too, so that a
  generic plan made on an empty table, or on statistics gone stale after a bulk enqueue, still
  walks the partial claim index in order and stops after ``limit`` rows instead of sorting every
  queued job, and a finish still looks its jobs up by primary key instead of scanning the table;
* and JIT: those switches add a huge cost to the plans they discourage, which would otherwise
  push the plan over ``jit_above_cost`` and compile it at every execution (~100-600 ms).

On asyncpg the autocommit lanes (claims, finishes) run their statements as asyncpg prepared
statements (:mod:`pgq_sa._worker.driver_path`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgq_sa import _deadlines as deadlines
from pgq_sa._config import make_async_engine, make_engine
from pgq_sa._deadlines import DEFAULT_STATEMENT_TIMEOUT
from pgq_sa._ops.drive import Operation, T, run_async, run_sync
from pgq_sa._pgbouncer import check_async_engine, check_engine
from pgq_sa._worker import driver_path
from pgq_sa._worker.effects import Lane

# Session settings of the lanes, as (name, value); each is RESET when the lane closes.
FINISH_SESSION = (
    ("plan_cache_mode", "force_generic_plan"),
    ("jit", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_seqscan", "off"),
)
CLAIM_SESSION = (*FINISH_SESSION, ("enable_sort", "off"))
Settings = Sequence[tuple[str, str]]


def _server_deadline(seconds: float) -> tuple[str, str]:
    """The server's own ``statement_timeout`` for a lane (milliseconds): a statement stuck in a
    lock is ended on the server too, its locks released. A second later than the client's, so
    the client's deadline is what the worker normally sees."""
    return ("statement_timeout", str(round((seconds + 1.0) * 1000)))


class SyncLane:
    """One component's connection, kept between its operations (each in a transaction of its
    own when ``transactional``)."""

    def __init__(
        self,
        engine: Engine,
        setup: Settings,
        *,
        transactional: bool = False,
        deadline: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._setup = (*setup, _server_deadline(deadline))
        self._transactional = transactional
        self._deadline = deadline
        self._connection: Connection | None = None
        self._guard: deadlines.Guard | None = None  # the statement in flight, if any

    def run(self, operation: Operation[T], deadline: float | None = None) -> T:
        seconds = deadline or self._deadline
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
                with deadlines.guard(self._connection.connection.dbapi_connection, seconds):
                    for name, value in self._setup:
                        self._connection.exec_driver_sql(f"SET {name} = {value}")
                    if self._connection.in_transaction():
                        self._connection.commit()  # session settings outlive it
            with deadlines.guard(self._connection.connection.dbapi_connection, seconds) as guard:
                self._guard = guard
                if self._transactional:
                    with self._connection.begin():
                        return run_sync(self._connection, operation)
                return run_sync(self._connection, operation)
        except BaseException:
            self.close(broken=True)
            raise
        finally:
            self._guard = None

    def interrupt(self) -> None:
        """Cut the statement in flight now, if any (from another thread): it fails at once."""
        guard = self._guard
        if guard is not None:
            guard.cut_now()

    def close(self, *, broken: bool = False) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if broken:
                connection.invalidate()
            else:
                for name, _ in self._setup:
                    connection.exec_driver_sql(f"RESET {name}")
                if connection.in_transaction():
                    connection.commit()
        except Exception:
            connection.invalidate()
        finally:
            connection.close()


class AsyncLane:
    def __init__(
        self,
        engine: AsyncEngine,
        setup: Settings,
        *,
        transactional: bool = False,
        compiled: driver_path.StatementCache | None = None,
        deadline: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._setup = (*setup, _server_deadline(deadline))
        self._transactional = transactional
        self._deadline = deadline
        self._scope: Any = None  # the cancel scope of the statement in flight, if any
        self._statements = compiled  # autocommit lanes on asyncpg: see workers/driver_path.py
        self._connection: AsyncConnection | None = None
        self._driver: driver_path.PreparedConnection | None = None

    async def run(self, operation: Operation[T], deadline: float | None = None) -> T:
        try:
            with deadlines.async_guard(deadline or self._deadline) as self._scope:
                connection = self._connection or await self._open()
                if self._transactional:
                    async with connection.begin():
                        return await run_async(connection, operation)
                if self._driver is not None:
                    return await self._driver.run(operation)
                return await run_async(connection, operation)
        except BaseException:
            await self.close(broken=True)
            raise
        finally:
            self._scope = None

    def interrupt(self) -> None:
        """End the statement in flight now, if any, as if its deadline had passed."""
        if self._scope is not None:
            self._scope.deadline = -math.inf

    async def _open(self) -> AsyncConnection:
        self._driver = None
        self._connection = connection = await self._engine.connect()
        for name, value in self._setup:
            await connection.exec_driver_sql(f"SET {name} = {value}")
        if connection.in_transaction():
            await connection.commit()  # session settings outlive it
        if self._statements is not None and not self._transactional:
            self._driver = driver_path.PreparedConnection(connection, self._statements)
        return connection

    async def close(self, *, broken: bool = False) -> None:
        connection, self._connection = self._connection, None
        self._driver = None
        if connection is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                if broken:
                    await connection.invalidate()
                else:
                    for name, _ in self._setup:
                        await connection.exec_driver_sql(f"RESET {name}")
                    if connection.in_transaction():
                        await connection.commit()
            except Exception:
                await connection.invalidate()
            finally:
                await connection.close()


class ThreadedLane:
    def __init__(self, lane: SyncLane, limiter: anyio.CapacityLimiter) -> None:
        self._lane = lane
        self._limiter = limiter

    async def run(self, operation: Operation[T], deadline: float | None = None) -> T:
        return await anyio.to_thread.run_sync(
            self._lane.run, operation, deadline, limiter=self._limiter
        )

    def interrupt(self) -> None:
        self._lane.interrupt()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._lane.close, limiter=self._limiter)


class SyncDatabase:
    def __init__(self, engine: Engine, deadline: float = DEFAULT_STATEMENT_TIMEOUT) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.transactional_engine = engine
        self.url = engine.url
        self.deadline = deadline

    def run(self, operation: Operation[T], deadline: float | None = None) -> T:
        with self.engine.connect() as connection:
            try:
                with deadlines.guard(
                    connection.connection.dbapi_connection, deadline or self.deadline
                ):
                    return run_sync(connection, operation)
            except deadlines.StatementDeadline:
                connection.invalidate()
                raise

    def describe(self) -> str:
        return describe(self.engine)

    def lane(
        self, setup: Settings = (), *, transactional: bool = False, deadline: float | None = None
    ) -> SyncLane:
        engine = self.transactional_engine if transactional else self.engine
        deadline = deadline or self.deadline
        return SyncLane(engine, setup, transactional=transactional, deadline=deadline)


class AsyncioDatabase:
    def __init__(self, engine: AsyncEngine, deadline: float = DEFAULT_STATEMENT_TIMEOUT) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.transactional_engine = engine
        self.url = engine.url
        self.deadline = deadline
        dialect = engine.dialect
        supported = driver_path.supported(dialect)
        self._compiled = driver_path.StatementCache(dialect) if supported else None

    async def run(self, operation: Operation[T], deadline: float | None = None) -> T:
        with anyio.CancelScope(shield=True):  # the checkout and check-in too (see async_guard)
            async with self.engine.connect() as connection:
                try:
                    with deadlines.async_guard(deadline or self.deadline):
                        result = await run_async(connection, operation)
                except deadlines.StatementDeadline:
                    await connection.invalidate()
                    raise
        return result

    def describe(self) -> str:
        return describe(self.engine)

    async def check_pooling(self) -> str | None:
        """A transaction-pooling PgBouncer between the worker and PostgreSQL? (a warning)"""
        return await check_async_engine(self.transactional_engine)

    @property
    def driver(self) -> str:
        return str(self.engine.dialect.driver)

    def lane(
        self, setup: Settings = (), *, transactional: bool = False, deadline: float | None = None
    ) -> AsyncLane:
        deadline = deadline or self.deadline
        if transactional:
            return AsyncLane(
                self.transactional_engine, setup, transactional=True, deadline=deadline
            )
        return AsyncLane(self.engine, setup, compiled=self._compiled, deadline=deadline)


class ThreadedDatabase:
    def __init__(
        self, engine: Engine, threads: int = 6, deadline: float = DEFAULT_STATEMENT_TIMEOUT
    ) -> None:
        self._sync = SyncDatabase(engine, deadline)
        self.transactional_engine = engine
        self._limiter = anyio.CapacityLimiter(threads)
        self.url = engine.url

    async def run(self, operation: Operation[T], deadline: float | None = None) -> T:
        return await anyio.to_thread.run_sync(
            self._sync.run, operation, deadline, limiter=self._limiter
        )

    def describe(self) -> str:
        return self._sync.describe() + " in worker threads"

    async def check_pooling(self) -> str | None:
        """A transaction-pooling PgBouncer between the worker and PostgreSQL? (a warning)"""
        return await anyio.to_thread.run_sync(check_engine, self.transactional_engine)

    @property
    def driver(self) -> str:
        return str(self.transactional_engine.dialect.driver)

    def lane(
        self,
        setup: Settings = (),
        *,
        transactional: bool = False,
        deadline: float | None = None,
        dedicated: bool = False,
    ) -> ThreadedLane:
        """A lane run in the database's worker threads; ``dedicated``: in a thread of its own,
        never queued behind the others (the heartbeat: a late one gets a worker rescued)."""
        lane = self._sync.lane(setup, transactional=transactional, deadline=deadline)
        return ThreadedLane(lane, anyio.CapacityLimiter(1) if dedicated else self._limiter)


def describe(engine: Engine | AsyncEngine) -> str:
    """Which driver, and where: the start-up log line says what a worker really runs on."""
    url = engine.url.render_as_string(hide_password=True)
    return f"{engine.dialect.driver} on {url}"


AsyncDatabase = AsyncioDatabase | ThreadedDatabase
Database = SyncDatabase | AsyncioDatabase | ThreadedDatabase
LaneT = TypeVar("LaneT", SyncLane, AsyncLane, ThreadedLane)

# The session settings of each component's lane (the heartbeat's has none: it is a lane so that
# it keeps its connection when the pool is busy).
_SETTINGS = {
    Lane.CLAIM: CLAIM_SESSION,
    Lane.LIMITED: CLAIM_SESSION,
    Lane.FINISH: FINISH_SESSION,
    Lane.HEARTBEAT: (),
}


# The ``balanced`` durability level: claims and heartbeats commit without waiting for the WAL
# flush (after a server crash a claimed job may run again, which at-least-once allows: the
# rescue requeues it); enqueues and finishes stay durable.
_ASYNC_COMMIT = (("synchronous_commit", "off"),)


def open_lanes(
    database: Database,
    fetchers: int,
    heartbeat_deadline: float | None = None,
    durability: str = "durable",
) -> dict[tuple[Lane, int], Any]:
    """The lanes of one worker: a claim and a limited-claim lane per fetcher (the latter runs
    each claim in a transaction), one finish lane and one heartbeat lane (numbered 0), whose
    deadline may be shorter so a hung heartbeat is retried well within the lease."""
    fast = _ASYNC_COMMIT if durability == "balanced" else ()
    lanes: dict[tuple[Lane, int], Any] = {}
    for number in range(fetchers):
        lanes[Lane.CLAIM, number] = database.lane((*_SETTINGS[Lane.CLAIM], *fast))
        lanes[Lane.LIMITED, number] = database.lane(
            (*_SETTINGS[Lane.LIMITED], *fast), transactional=True
        )
    lanes[Lane.FINISH, 0] = database.lane(_SETTINGS[Lane.FINISH])
    heartbeat = (*_SETTINGS[Lane.HEARTBEAT], *fast)
    if isinstance(database, ThreadedDatabase):  # its own thread: never behind busy claims
        lanes[Lane.HEARTBEAT, 0] = database.lane(
            heartbeat, deadline=heartbeat_deadline, dedicated=True
        )
    else:
        lanes[Lane.HEARTBEAT, 0] = database.lane(heartbeat, deadline=heartbeat_deadline)
    return lanes


def interrupt_claims(lanes: dict[tuple[Lane, int], Any]) -> None:
    """A stopping worker does not wait for claims in flight (a claim may never be answered on a
    dead network): cut them. What a cut claim took is handed back at shutdown."""
    for (lane, _), kept in lanes.items():
        if lane in (Lane.CLAIM, Lane.LIMITED):
            kept.interrupt()


def sync_engine(bind: Engine | str | URL) -> tuple[Engine, bool]:
    """The ThreadWorker's engine, and whether the worker owns (and so disposes) it."""
    if isinstance(bind, Engine):
        return bind, False
    if isinstance(bind, (str, URL)):
        return make_engine(bind), True
    raise TypeError(f"bind must be a sync Engine or a database URL, got {type(bind).__name__}")


def async_database(
    bind: AsyncEngine | Engine | str | URL, backend: str, deadline: float
) -> tuple[AsyncDatabase, Callable[[], Awaitable[None]]]:
    """The AsyncWorker's database on ``backend``, and how to dispose of what it created: an
    AsyncEngine on asyncio (asyncpg unless the URL names psycopg), else a sync engine run in
    worker threads (trio, or a sync Engine given)."""
    if isinstance(bind, AsyncEngine):
        if backend != "asyncio":
            raise RuntimeError(
                "an AsyncEngine runs on asyncio only; on trio pass a URL or a sync Engine"
            )
        return AsyncioDatabase(bind, deadline), _nothing
    if isinstance(bind, Engine):
        return ThreadedDatabase(bind, deadline=deadline), _nothing
    if backend == "asyncio":
        engine = make_async_engine(bind)
        return AsyncioDatabase(engine, deadline), engine.dispose
    sync = make_engine(bind)

    async def dispose() -> None:
        sync.dispose()

    return ThreadedDatabase(sync, deadline=deadline), dispose


async def _nothing() -> None:
    return None
