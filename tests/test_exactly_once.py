"""Under concurrency every job runs exactly once: mixed workers, thousands of jobs, a side table."""

from __future__ import annotations

import time

import anyio
import pytest
from sqlalchemy import text
from worker_helpers import start_worker

from pgq_sa import JobSpec, Queue

pytestmark = pytest.mark.timeout(240)

JOBS = 6000


def test_mixed_workers_run_each_job_exactly_once(engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE runs (job_id bigint, worker text)"))
    queue = Queue()

    def record(job, worker: str) -> None:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO runs VALUES (:id, :worker)"), {"id": job.id, "worker": worker}
            )

    @queue.task("sync.work")
    def sync_work(job):
        record(job, "sync")

    @queue.task("async.work")
    async def async_work(job):
        await anyio.to_thread.run_sync(record, job, "async")

    ids = queue.enqueue_many(
        engine,
        [JobSpec("sync.work" if n % 2 else "async.work", {"n": n}) for n in range(JOBS)],
    )
    workers = [
        start_worker("threads", queue, database_url, size=8, batch_size=10),
        start_worker("threads", queue, database_url, size=4, batch_size=3),
        start_worker("asyncio", queue, database_url, size=16, batch_size=10),
        start_worker("trio", queue, database_url, size=16, batch_size=7),
        start_worker("asyncio", queue, database_url, size=4, batch_size=1),
    ]
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            left = connection.execute(
                text("SELECT count(*) FROM pgq.jobs WHERE state <> 'succeeded'")
            ).scalar_one()
        if left == 0:
            break
        time.sleep(0.2)
    for running in workers:
        running.stop()
    with engine.connect() as connection:
        runs = dict(connection.execute(text("SELECT job_id, count(*) FROM runs GROUP BY 1")).all())
        states = dict(
            connection.execute(text("SELECT state, count(*) FROM pgq.jobs GROUP BY 1")).all()
        )
        by_worker = connection.execute(
            text("SELECT count(DISTINCT worker_id) FROM pgq.jobs")
        ).scalar_one()
    assert states == {"succeeded": JOBS}
    assert set(runs) == set(ids), "some jobs never ran"
    duplicates = {job_id: count for job_id, count in runs.items() if count != 1}
    assert duplicates == {}
    assert by_worker == len(workers)  # every worker took part
