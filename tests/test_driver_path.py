"""The AsyncWorker's asyncpg path: the same statements and the same values as SQLAlchemy's."""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio
import pytest
from helpers import register
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from pgq_sa import JobSpec, Queue
from pgq_sa import _decisions as decisions
from pgq_sa._config import make_async_engine
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.worker import Identity
from pgq_sa._worker import driver_path
from pgq_sa._worker.lanes import CLAIM_SESSION, AsyncioDatabase

PAYLOADS = [{"n": 1, "nested": {"a": [1, 2]}}, [1, "two", None], "text", 3.5, None, True]


def _run(coroutine_function):
    return anyio.run(coroutine_function, backend="asyncio")


def _claim_and_finish(url, statements, worker_id, limit: int, through_driver: bool):
    """Claim ``limit`` jobs, then write their outcomes (the first one a retry, the others
    successes) while claiming up to two more, on a lane (driver path or not)."""

    async def main():
        engine = make_async_engine(url.set(drivername="postgresql"))  # asyncpg
        database = AsyncioDatabase(engine)
        lane = database.lane(CLAIM_SESSION)
        if not through_driver:
            lane._statements = None  # the SQLAlchemy path, for comparison
        try:
            claimed = (
                await lane.run(protocol.claim(statements, worker_id, ["t"], None, limit))
            ).jobs
            assert (lane._driver is not None) is through_driver
            retried, *rest = claimed
            outcomes = [
                decisions.errored(
                    retried.job.id, retried.job.attempt, retried.job.max_attempts, ValueError("x")
                ),
                *(decisions.succeeded(c.job.id, c.job.attempt, c.job.payload) for c in rest),
            ]
            finished, more = await lane.run(
                protocol.finish_and_claim(statements, worker_id, outcomes, ["t"], None, 2)
            )
            return claimed, finished, more.jobs
        finally:
            await lane.close()
            await engine.dispose()

    return _run(main)


def test_the_driver_path_returns_what_sqlalchemy_returns(engine, database_url):
    queue = Queue()
    worker = register(engine, queue, Identity.new("async"))
    specs = [JobSpec("t", p) for p in [*PAYLOADS, "extra 1", "extra 2"]]
    first = queue.enqueue_many(engine, specs)
    by_driver, driver_finished, driver_more = _claim_and_finish(
        database_url, queue.statements, worker.id, len(PAYLOADS), through_driver=True
    )
    second = queue.enqueue_many(engine, specs)
    by_sqlalchemy, sqlalchemy_finished, sqlalchemy_more = _claim_and_finish(
        database_url, queue.statements, worker.id, len(PAYLOADS), through_driver=False
    )
    assert [c.job.id for c in by_driver] == first[: len(PAYLOADS)]
    assert [c.job.id for c in by_sqlalchemy] == second[: len(PAYLOADS)]
    assert [c.job.id for c in driver_more] == first[len(PAYLOADS) :]
    assert [c.job.id for c in sqlalchemy_more] == second[len(PAYLOADS) :]
    assert [c.job.payload for c in driver_more] == [c.job.payload for c in sqlalchemy_more]
    for ours, theirs in zip(by_driver, by_sqlalchemy, strict=True):
        assert ours.job.payload == theirs.job.payload
        assert type(ours.job.payload) is type(theirs.job.payload)
        for name in ("task", "attempt", "max_attempts", "priority", "queue", "meta"):
            assert getattr(ours.job, name) == getattr(theirs.job, name)
        for moment in ("created_at", "run_at", "started_at"):
            value = getattr(ours.job, moment)
            assert isinstance(value, datetime)
            assert value.utcoffset() == timedelta(0)
        assert (ours.timeout, ours.cancel_requested) == (theirs.timeout, theirs.cancel_requested)
    for finished, ids in ((driver_finished, first), (sqlalchemy_finished, second)):
        assert finished.recorded == {
            ids[0]: "queued",
            **dict.fromkeys(ids[1 : len(PAYLOADS)], "succeeded"),
        }
        assert finished.lost == ()
        assert isinstance(finished.next_run_at, datetime)
        assert finished.next_run_at.utcoffset() == timedelta(0)
    for job_id, payload in zip(first[1 : len(PAYLOADS)], PAYLOADS[1:], strict=True):
        assert queue.get(engine, job_id).result == payload


def test_driver_errors_reach_the_worker_as_dbapi_errors(engine, database_url):
    queue = Queue()
    worker = register(engine, queue, Identity.new("async"))

    async def main() -> None:
        async_engine = make_async_engine(database_url.set(drivername="postgresql"))  # asyncpg
        lane = AsyncioDatabase(async_engine).lane(CLAIM_SESSION)
        try:
            await lane.run(protocol.claim(queue.statements, worker.id, ["t"], None, 1))
            with engine.connect() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            with pytest.raises(DBAPIError):
                await lane.run(protocol.claim(queue.statements, worker.id, ["t"], None, 1))
            # the lane was closed as broken; the next run opens a fresh connection
            claims = await lane.run(protocol.claim(queue.statements, worker.id, ["t"], None, 1))
            assert claims.jobs == []
        finally:
            await lane.close()
            await async_engine.dispose()

    _run(main)


def test_only_asyncpg_takes_the_driver_path(database_url):
    async def main() -> tuple[bool, bool]:
        asyncpg_engine = make_async_engine(database_url.set(drivername="postgresql+asyncpg"))
        psycopg_engine = make_async_engine(database_url.set(drivername="postgresql+psycopg"))
        try:
            return (
                driver_path.supported(asyncpg_engine.dialect),
                driver_path.supported(psycopg_engine.dialect),
            )
        finally:
            await asyncpg_engine.dispose()
            await psycopg_engine.dispose()

    assert _run(main) == (True, False)


def test_every_operation_on_a_prepared_lane_reads_rows_by_position(engine, database_url):
    """asyncpg records have no attribute access: what runs on the AsyncWorker's autocommit lanes
    (claims, finishes, heartbeats) must read rows by position."""
    queue = Queue()
    worker = register(engine, queue, Identity.new("async"))

    async def main() -> None:
        async_engine = make_async_engine(database_url.set(drivername="postgresql"))  # asyncpg
        lane = AsyncioDatabase(async_engine).lane()
        try:
            beat = await lane.run(protocol.heartbeat(queue.statements, worker.id))
            assert beat.alive
            assert beat.cancel == ()
            assert lane._driver is not None  # it went through the prepared path
        finally:
            await lane.close()
            await async_engine.dispose()

    _run(main)
