"""Through a real PgBouncer: producers enqueue in transaction pooling with the settings
docs/operations.md gives for psycopg, psycopg2 and asyncpg, and the check workers run at start
tells a transaction pooler from a direct connection or a session pooler."""

from __future__ import annotations

import uuid

import anyio
import pytest
from pgbouncer import BINARY, MISSING, running
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from pgq_sa import Queue
from pgq_sa._pgbouncer import check_async_engine, check_engine, verdict

pytestmark = pytest.mark.skipif(BINARY is None, reason=MISSING)

ROUNDS = 8  # more than psycopg's prepare_threshold (5): server-side statements would be made


@pytest.fixture(scope="module")
def transaction_bouncer(server_url, tmp_path_factory):
    with running(server_url, tmp_path_factory.mktemp("pgbouncer_tx"), "transaction") as url:
        yield url


@pytest.fixture(scope="module")
def session_bouncer(server_url, tmp_path_factory):
    with running(server_url, tmp_path_factory.mktemp("pgbouncer_session"), "session") as url:
        yield url


@pytest.fixture
def through(transaction_bouncer, database_url):
    """This test's database, through the transaction-pooling PgBouncer."""
    return transaction_bouncer.set(database=database_url.database)


def _unique_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


# The engines docs/operations.md recommends for producers behind transaction pooling.
def psycopg_engine(url):
    return create_engine(
        url.set(drivername="postgresql+psycopg"), connect_args={"prepare_threshold": None}
    )


def psycopg2_engine(url):
    return create_engine(url.set(drivername="postgresql+psycopg2"))


def asyncpg_engine(url, *, unique_names=True):
    target = url.set(drivername="postgresql+asyncpg").update_query_dict(
        {"prepared_statement_cache_size": "0"}
    )
    args = {"prepared_statement_name_func": _unique_name} if unique_names else {}
    return create_async_engine(target, connect_args=args)


def _enqueue_sync(engine, queue):
    """Sessions that roll back and commit, interleaved on two clients so that they share server
    sessions; returns the ids committed."""
    ids = []
    with Session(engine) as one, Session(engine) as two:
        for n in range(ROUNDS):
            for session in (one, two):
                queue.enqueue(session, "bounced", {"n": n, "rolled_back": True})
                session.rollback()
                ids.append(queue.enqueue(session, "bounced", {"n": n}))
                session.commit()
    return ids


@pytest.mark.parametrize("make_engine", [psycopg_engine, psycopg2_engine])
def test_sync_producers_through_transaction_pooling(make_engine, through, engine):
    queue = Queue()
    bounced = make_engine(through)
    try:
        ids = _enqueue_sync(bounced, queue)
    finally:
        bounced.dispose()
    assert len(ids) == 2 * ROUNDS
    assert [queue.get(engine, i).payload["n"] for i in ids] == [n for n in range(ROUNDS)
                                                                 for _ in (1, 2)]  # fmt: skip
    assert sorted(ids) == list(range(1, 4 * ROUNDS + 1))[1::2]  # rolled back ids are gaps


async def _enqueue_async(engine, queue):
    ids = []
    async with AsyncSession(engine) as one, AsyncSession(engine) as two:
        for n in range(ROUNDS):
            for session in (one, two):
                await queue.enqueue_async(session, "bounced", {"n": n, "rolled_back": True})
                await session.rollback()
                ids.append(await queue.enqueue_async(session, "bounced", {"n": n}))
                await session.commit()
    return ids


def test_asyncpg_producer_through_transaction_pooling(through, engine):
    queue = Queue()

    async def main():
        bounced = asyncpg_engine(through)
        try:
            return await _enqueue_async(bounced, queue)
        finally:
            await bounced.dispose()

    ids = anyio.run(main, backend="asyncio")
    assert len(ids) == 2 * ROUNDS
    assert [queue.get(engine, i).payload["n"] for i in ids] == [n for n in range(ROUNDS)
                                                                 for _ in (1, 2)]  # fmt: skip


# --- telling a transaction pooler apart ----------------------------------------------------------


def test_verdict():
    assert verdict(10, 11, 10) is None
    assert "shared the server session of process 10" in verdict(10, 10, 11)
    assert "moved from server process 10 to 12" in verdict(10, 11, 12)
    assert "pool_mode = session" in verdict(10, 10, 10)


def test_check_on_a_direct_connection_finds_nothing(engine):
    assert check_engine(engine) is None


def test_check_through_a_session_pooler_finds_nothing(session_bouncer, database_url):
    bounced = psycopg_engine(session_bouncer.set(database=database_url.database))
    try:
        assert check_engine(bounced) is None
    finally:
        bounced.dispose()


@pytest.mark.parametrize("make_engine", [psycopg_engine, psycopg2_engine])
def test_check_through_transaction_pooling_warns(make_engine, through):
    bounced = make_engine(through)
    try:
        warning = check_engine(bounced)
    finally:
        bounced.dispose()
    assert warning is not None
    assert "transaction mode" in warning
    assert "pool_mode = session" in warning


@pytest.mark.parametrize("unique_names", [True, False])
def test_async_check_through_transaction_pooling_warns(through, database_url, unique_names):
    async def main():
        results = []
        for url in (through, database_url):
            bounced = asyncpg_engine(url, unique_names=unique_names)
            try:
                results.append(await check_async_engine(bounced))
            finally:
                await bounced.dispose()
        return results

    through_bouncer, direct = anyio.run(main, backend="asyncio")
    assert through_bouncer is not None
    assert "transaction mode" in through_bouncer
    assert direct is None
