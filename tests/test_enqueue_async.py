"""Producer API on async binds: asyncpg and psycopg on asyncio, a sync Engine on trio."""

from __future__ import annotations

import pytest
from helpers import count_jobs
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from pgq_sa import JobSpec, JobStatus, Queue
from pgq_sa._config import make_async_engine

pytestmark = pytest.mark.anyio


# SQLAlchemy's AsyncEngine runs on asyncio only; on trio the async API takes a sync Engine.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture(params=["asyncpg", "psycopg"])
async def async_engine(request, database_url):
    engine = make_async_engine(database_url.set(drivername=f"postgresql+{request.param}"))
    yield engine
    await engine.dispose()


@asyncio_only
async def test_async_session_commit_and_rollback(async_engine, engine):
    queue = Queue()
    async with AsyncSession(async_engine) as session:
        kept = await queue.enqueue_async(session, "a", {"x": 1})
        await session.commit()
    async with AsyncSession(async_engine) as session:
        dropped = await queue.enqueue_async(session, "b")
        await session.rollback()
    assert (await queue.get_async(async_engine, kept)).payload == {"x": 1}
    assert await queue.get_async(async_engine, dropped) is None
    assert count_jobs(engine) == 1


@asyncio_only
async def test_async_connection_joins_transaction(async_engine, engine):
    queue = Queue()
    async with async_engine.connect() as connection:
        await connection.execute(text("CREATE TABLE t (id int)"))
        await connection.execute(text("INSERT INTO t VALUES (1)"))
        await queue.enqueue_async(connection, "a")
        await connection.rollback()
    assert count_jobs(engine) == 0


@asyncio_only
async def test_async_bulk_dedupe_cancel_retry_pause(async_engine):
    queue = Queue()
    ids = await queue.enqueue_many_async(
        async_engine, [JobSpec("t", {"n": n}, dedupe_key=f"k{n % 4}") for n in range(12)]
    )
    assert len(set(ids)) == 4
    assert ids[:4] == ids[4:8] == ids[8:]
    assert await queue.cancel_async(async_engine, ids[0])
    assert (await queue.get_async(async_engine, ids[0])).status is JobStatus.cancelled
    assert await queue.retry_async(async_engine, ids[0])
    await queue.pause_async(async_engine, "default")
    await queue.resume_async(async_engine, "default")


async def test_sync_engine_in_a_worker_thread_on_any_backend(engine, anyio_backend):
    queue = Queue()
    ids = await queue.enqueue_many_async(engine, [JobSpec("t", n) for n in range(100)])
    one = await queue.enqueue_async(engine, "t", "x", priority=3)
    info = await queue.get_async(engine, one)
    assert info.priority == 3
    assert info.payload == "x"
    assert len(ids) == 100
    assert await queue.cancel_async(engine, one)


async def test_sync_session_on_async_method_is_refused(engine):
    from sqlalchemy.orm import Session

    with Session(engine) as session, pytest.raises(TypeError, match="without _async"):
        await Queue().enqueue_async(session, "t")
