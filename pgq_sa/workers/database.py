"""How a worker reaches the database: three small executors with one job each.

* :class:`SyncDatabase` runs an operation on a sync Engine (the thread worker);
* :class:`AsyncioDatabase` awaits it on an AsyncEngine (the async worker on asyncio);
* :class:`ThreadedDatabase` runs the sync executor in anyio worker threads under a capacity
  limiter (the async worker on trio, or given a sync Engine).

Every statement runs in autocommit: each claim, heartbeat or finish is one statement and one round
trip, committed at once.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from pgq_sa.executors import Operation, T, run_async, run_sync


class SyncDatabase:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.url = engine.url

    def run(self, operation: Operation[T]) -> T:
        with self.engine.connect() as connection:
            return run_sync(connection, operation)


class AsyncioDatabase:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.url = engine.url

    async def run(self, operation: Operation[T]) -> T:
        async with self.engine.connect() as connection:
            return await run_async(connection, operation)


class ThreadedDatabase:
    def __init__(self, engine: Engine, threads: int = 4) -> None:
        self._sync = SyncDatabase(engine)
        self._limiter = anyio.CapacityLimiter(threads)
        self.url = engine.url

    async def run(self, operation: Operation[T]) -> T:
        return await anyio.to_thread.run_sync(self._sync.run, operation, limiter=self._limiter)


AsyncDatabase = AsyncioDatabase | ThreadedDatabase
