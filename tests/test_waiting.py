"""``Queue.wait``: woken by the finishing statement's NOTIFY, which only awaited jobs send.

Every test here turns the waiters' fallback poll off (an hour), so a waiter that returns in time
was woken by a notification: a missed one would make it time out.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import psycopg
import pytest
from helpers import until_awaited
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from worker_helpers import KINDS, make_worker, run_worker, start_worker

from pgq_sa import JobSpec, JobStatus, Queue
from pgq_sa import _waiting as waiting
from pgq_sa._schema import finished_channel, notify_channel

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def no_fallback_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "POLL_INTERVAL", 3600.0)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _listen(url: URL, channel: str) -> psycopg.Connection:
    connection = psycopg.connect(
        url.set(drivername="postgresql").render_as_string(False), autocommit=True
    )
    connection.execute(f'LISTEN "{channel}"')
    return connection


def _awaited(engine: Engine, job_id: int) -> bool:
    with engine.connect() as connection:
        statement = text("SELECT awaited FROM pgq.jobs WHERE id = :id")
        return bool(connection.execute(statement, {"id": job_id}).scalar_one())


def test_only_awaited_jobs_are_announced(kind, engine, database_url):
    queue = Queue()

    @queue.task("t")
    def handler(job):
        return job.payload

    ignored, awaited = queue.enqueue_many(engine, [JobSpec("t", "ignored"), JobSpec("t", "kept")])
    announcements = _listen(database_url, finished_channel("pgq"))
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(queue.wait, engine, awaited, 60)
        until_awaited(engine, awaited)
        assert not _awaited(engine, ignored)
        run_worker(make_worker(kind, queue, database_url), kind)
        info = waiter.result(timeout=60)
    assert info.status is JobStatus.succeeded
    assert info.result == "kept"
    payloads = [n.payload for n in announcements.notifies(timeout=0.5)]
    announcements.close()
    assert payloads == [f'{{"ids" : [{awaited}]}}']


def test_waiters_racing_the_finishes_are_all_woken(kind, engine, database_url):
    """Ten waiters start while a worker is finishing their jobs: each flag lands before or
    after the finishing statement (the row lock orders them), never unseen by both. (Ten: each
    waiter holds a LISTEN connection, and the suite runs in parallel on a 100-connection server.)"""
    queue = Queue()

    @queue.task("t")
    def handler(job):
        time.sleep(0.002 * (job.payload % 5))
        return job.payload

    ids = queue.enqueue_many(engine, [JobSpec("t", n) for n in range(300)])
    awaited = ids[::30]
    start = threading.Barrier(len(awaited) + 1)

    def wait_for(job_id: int) -> JobStatus:
        start.wait()
        return queue.wait(engine, job_id, timeout=60).status

    with ThreadPoolExecutor(len(awaited)) as pool:
        futures = [pool.submit(wait_for, job_id) for job_id in awaited]
        running = start_worker(kind, queue, database_url, until_empty=True, size=8)
        start.wait()
        statuses = [future.result(timeout=90) for future in futures]
        running.join(60)
    assert statuses == [JobStatus.succeeded] * len(awaited)


def test_flagging_a_queued_job_wakes_the_workers_again(engine, database_url):
    """A claim that ran while the flag's UPDATE held the row skipped the job, and the enqueue's
    NOTIFY is spent: flagging a queued job announces it to the workers again."""
    queue = Queue()
    job_id = queue.enqueue(engine, "t")
    wakeups = _listen(database_url, notify_channel("pgq"))
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(queue.wait, engine, job_id, 1.5)
        until_awaited(engine, job_id)
        heard = [n.payload for n in wakeups.notifies(timeout=5, stop_after=1)]
        with pytest.raises(TimeoutError):
            waiter.result(timeout=30)
    wakeups.close()
    assert heard == ['{"reason" : "awaited", "tasks" : ["t"]}'], heard


def test_cancelling_an_awaited_queued_job_wakes_its_waiter(engine):
    queue = Queue()
    job_id = queue.enqueue(engine, "never.runs")
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(queue.wait, engine, job_id, 60)
        until_awaited(engine, job_id)
        assert queue.cancel(engine, job_id)
        assert waiter.result(timeout=30).status is JobStatus.cancelled


def test_a_finished_job_is_not_flagged_and_returns_at_once(engine, database_url):
    queue = Queue()

    @queue.task("t")
    def handler(job):
        return 1

    job_id = queue.enqueue(engine, "t")
    run_worker(make_worker("threads", queue, database_url), "threads")
    assert queue.wait(engine, job_id, timeout=5).status is JobStatus.succeeded
    assert not _awaited(engine, job_id)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_wait_async_is_woken_by_the_announcement(backend, engine, database_url):
    queue = Queue()

    @queue.task("t")
    async def handler(job):
        return job.payload + 1

    job_id = queue.enqueue(engine, "t", 41)

    async def main() -> int:
        async with anyio.create_task_group() as group:
            waiter: list[int] = []

            async def wait() -> None:
                info = await queue.wait_async(engine, job_id, timeout=60)
                waiter.append(info.result)

            group.start_soon(wait)
            await anyio.to_thread.run_sync(until_awaited, engine, job_id)
            worker = make_worker(backend, queue, database_url)
            await worker.run(until_empty=True)  # type: ignore[union-attr]
        return waiter[0]

    assert anyio.run(main, backend=backend) == 42
