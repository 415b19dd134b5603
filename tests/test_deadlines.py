"""Every worker statement has a client-side deadline, and a stop ends a worker in bounded time even
while every database call hangs (issue 14: "no silent hang", "stop means stop").

The hangs here are real: a lock held by the test that the worker's statements need, or a
``pg_sleep`` that the server runs longer than the deadline. (Network partitions, where the server
never answers at all, are in tests/faults/.)
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from sqlalchemy import text
from worker_helpers import KINDS, start_worker

from pgq_sa import Queue
from pgq_sa._config import make_async_engine
from pgq_sa._deadlines import StatementDeadline
from pgq_sa._ops.drive import Operation
from pgq_sa._worker.lanes import AsyncioDatabase, SyncDatabase


def _sleep(seconds: float) -> Operation[None]:
    yield text("SELECT pg_sleep(:s)"), {"s": seconds}


def _one() -> Operation[int]:
    (row,) = yield text("SELECT 1 AS one"), None
    return int(row[0])


def test_a_sync_statement_past_its_deadline_is_cut_and_the_lane_recovers(engine):
    database = SyncDatabase(engine, deadline=0.5)
    lane = database.lane()
    started = time.monotonic()
    with pytest.raises(StatementDeadline, match=r"no answer from the database within 0\.5s"):
        lane.run(_sleep(30))
    assert time.monotonic() - started < 5
    assert lane.run(_one()) == 1  # a fresh connection
    with pytest.raises(StatementDeadline):
        database.run(_sleep(30))  # pooled calls too
    assert database.run(_one()) == 1
    lane.close()


def test_an_async_statement_past_its_deadline_is_cancelled_and_the_lane_recovers(database_url):
    async def main() -> None:
        engine = make_async_engine(database_url.set(drivername="postgresql"))  # asyncpg
        database = AsyncioDatabase(engine, deadline=0.5)
        lane = database.lane()
        try:
            started = time.monotonic()
            with pytest.raises(StatementDeadline):
                await lane.run(_sleep(30))
            assert time.monotonic() - started < 5
            assert await lane.run(_one()) == 1
            with pytest.raises(StatementDeadline):
                await database.run(_sleep(30))
            assert await database.run(_one()) == 1
        finally:
            await lane.close()
            await engine.dispose()

    anyio.run(main, backend="asyncio")


@pytest.mark.parametrize("kind", KINDS)
def test_stop_ends_a_worker_whose_every_statement_hangs(kind, engine, database_url):
    """Hold exclusive locks on the queue's tables: every statement of the worker now waits on
    the server. stop() must still end the worker within shutdown_timeout plus a few deadlines."""
    queue = Queue()
    started = threading.Event()

    @queue.task("t")
    def handler(job):
        started.set()

    queue.enqueue(engine, "t")
    running = start_worker(
        kind,
        queue,
        database_url,
        statement_timeout=1.0,
        shutdown_timeout=1.0,
        heartbeat_interval=0.2,
        lease_timeout=3.0,
    )
    assert started.wait(30)
    with engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE pgq.jobs, pgq.workers IN ACCESS EXCLUSIVE MODE"))
        time.sleep(0.5)  # let the worker's statements pile up behind the locks
        stopping = time.monotonic()
        running.worker.stop()
        running.thread.join(15)
        took = time.monotonic() - stopping
        blocker.rollback()
    assert not running.thread.is_alive(), "the worker did not stop while its statements hung"
    # the grace period (1 s) and the final statements, each bounded by its deadline (1 s)
    assert took < 8, took
    assert running.errors == []
