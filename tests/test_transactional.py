"""Transactional tasks: the handler's effect commits with the job's completion, exactly once."""

from __future__ import annotations

import time
import uuid

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import text
from worker_helpers import KINDS, make_worker, run_worker, start_worker

from pgq_sa import AsyncWorker, Job, JobSpec, JobStatus, Queue, Retry, ThreadWorker
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import run_sync

pytestmark = pytest.mark.timeout(120)

INSERT = text("INSERT INTO effects VALUES (:job, :attempt, :task)")
# One snapshot: effects whose job is not succeeded, succeeded jobs without an effect, and what
# is left to run.
TORN = text(
    """
SELECT (SELECT count(*) FROM pgq.jobs AS j
         WHERE (j.state = 'succeeded')
               <> EXISTS (SELECT 1 FROM effects AS e WHERE e.job_id = j.id)),
       (SELECT count(*) FROM pgq.jobs WHERE state IN ('queued', 'running'))
"""
)


def _effect(job: Job) -> dict[str, object]:
    return {"job": job.id, "attempt": job.attempt, "task": job.task}


def _lose_lease(queue: Queue, engine, job: Job) -> None:
    """From outside the attempt's transaction: forget its worker and run the real rescue, as
    another worker's maintenance would; the job is queued again, the attempt counted."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "DELETE FROM pgq.workers WHERE id IN (SELECT worker_id FROM pgq.jobs WHERE id = :j)"
            ),
            {"j": job.id},
        )
    rescuer = uuid.uuid4()  # another worker
    rescued = run_sync(engine, protocol.rescue(queue.statements, rescuer, 60.0))
    assert rescued.requeued >= 1


def _queue(kind: str, engine) -> tuple[Queue, list[str]]:
    queue = Queue()

    @queue.task("tx.write", transactional=True)
    def write(job):
        job.connection.execute(INSERT, _effect(job))
        return {"n": job.payload["n"], "attempt": job.attempt}

    @queue.task("tx.retry_once", transactional=True)
    def retry_once(job):
        job.connection.execute(INSERT, _effect(job))
        if job.attempt == 1:
            raise Retry(delay=0)
        return {"attempt": job.attempt}

    @queue.task("tx.fails", transactional=True, max_attempts=1)
    def fails(job):
        job.connection.execute(INSERT, _effect(job))
        raise ValueError("boom after writing")

    @queue.task("tx.lease_lost", transactional=True)
    def lease_lost(job):
        job.connection.execute(INSERT, _effect(job))
        if job.attempt == 1:
            _lose_lease(queue, engine, job)
        return {"attempt": job.attempt}

    writers = ["tx.write"]
    if kind == "asyncio":  # async def handlers get an AsyncConnection on asyncio

        @queue.task("tx.write_async", transactional=True)
        async def write_async(job):
            await job.connection.execute(INSERT, _effect(job))
            return {"n": job.payload["n"], "attempt": job.attempt}

        @queue.task("tx.lease_lost_async", transactional=True)
        async def lease_lost_async(job):
            await job.connection.execute(INSERT, _effect(job))
            if job.attempt == 1:
                await anyio.to_thread.run_sync(_lose_lease, queue, engine, job)
            return {"attempt": job.attempt}

        writers.append("tx.write_async")
    return queue, writers


@pytest.mark.parametrize("kind", KINDS)
def test_effects_commit_with_the_completion_exactly_once(kind, engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE effects (job_id bigint, attempt int, task text)"))
    queue, writers = _queue(kind, engine)
    specs = [JobSpec(writers[n % len(writers)], {"n": n}) for n in range(40)]
    written = queue.enqueue_many(engine, specs)
    retried = queue.enqueue(engine, "tx.retry_once")
    failing = queue.enqueue(engine, "tx.fails")
    running = start_worker(kind, queue, database_url, size=8)
    try:  # an effect is never visible before its job is succeeded, and vice versa
        while True:
            with engine.connect() as connection:
                torn, left = connection.execute(TORN).one()
            assert torn == 0, "an effect and its job's completion were seen apart"
            if left == 0:
                break
            time.sleep(0.01)
    finally:
        running.stop()
    # then, alone (the rescue takes every job of the worker): attempts that lose their lease
    lost = [queue.enqueue(engine, "tx.lease_lost")]
    if kind == "asyncio":
        lost.append(queue.enqueue(engine, "tx.lease_lost_async"))
    run_worker(make_worker(kind, queue, database_url, size=1), kind)

    with engine.connect() as connection:
        effects = connection.execute(text("SELECT job_id, attempt FROM effects")).all()
    by_job: dict[int, list[int]] = {}
    for job_id, attempt in effects:
        by_job.setdefault(job_id, []).append(attempt)
    for job_id in [*written, retried, *lost]:
        info = queue.get(engine, job_id)
        assert info.status is JobStatus.succeeded, info
        assert by_job.get(job_id) == [info.attempts], f"job {job_id}: effects {by_job.get(job_id)}"
        assert info.result["attempt"] == info.attempts
    for job_id, spec in zip(written, specs, strict=True):
        assert queue.get(engine, job_id).result["n"] == spec.payload["n"]
    assert queue.get(engine, retried).attempts == 2
    for job_id in lost:
        info = queue.get(engine, job_id)
        assert info.attempts == 2  # the first attempt's lease was lost, its effect rolled back
    failed = queue.get(engine, failing)
    assert failed.status is JobStatus.failed
    assert failed.error.type == "ValueError"
    assert failing not in by_job  # the failed attempt's effect was rolled back


def test_job_connection_outside_a_transactional_task_is_a_clear_error():
    job = Job(1, "plain", None, 1, 1, 0, "default", None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"transactional=True.*'plain'"):
        _ = job.connection


def test_transactional_must_be_a_bool():
    with pytest.raises(TypeError, match="transactional must be True or False"):
        Queue().task("x", transactional="yes")(lambda job: None)  # type: ignore[arg-type]


def _async_transactional_queue() -> Queue:
    queue = Queue()

    @queue.task("tx.async", transactional=True)
    async def handler(job):
        await job.connection.execute(text("SELECT 1"))

    return queue


def test_thread_worker_refuses_async_transactional_tasks():
    with pytest.raises(ValueError, match=r"transactional async def tasks \(tx\.async\)"):
        ThreadWorker(_async_transactional_queue(), "postgresql://nowhere/none")


def test_async_worker_on_trio_refuses_async_transactional_tasks_before_sql(engine, database_url):
    worker = AsyncWorker(_async_transactional_queue(), database_url)

    async def main() -> None:
        await worker.run(until_empty=True)

    with pytest.raises(ValueError, match="on trio"):
        anyio.run(main, backend="trio")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pgq.workers")).scalar_one() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_timed_out_transactional_attempt_is_rolled_back(kind, engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE effects (job_id bigint, attempt int, task text)"))
    queue = Queue()
    slow = "SELECT pg_sleep(:s)"

    if kind == "asyncio":  # cancelled for real, in the middle of a statement

        @queue.task("tx.slow", transactional=True, timeout=0.3, max_attempts=1)
        async def slow_async(job):
            await job.connection.execute(INSERT, _effect(job))
            await job.connection.execute(text(slow), {"s": 10})

    else:  # a def handler runs on; its attempt is recorded as timed out and rolled back

        @queue.task("tx.slow", transactional=True, timeout=0.3, max_attempts=1)
        def slow_sync(job):
            job.connection.execute(INSERT, _effect(job))
            job.connection.execute(text(slow), {"s": 0.6})

    @queue.task("tx.write", transactional=True)
    def write(job):
        job.connection.execute(INSERT, _effect(job))

    timed_out = queue.enqueue(engine, "tx.slow")
    after = queue.enqueue_many(engine, [JobSpec("tx.write") for _ in range(5)])
    run_worker(make_worker(kind, queue, database_url, size=2), kind)

    info = queue.get(engine, timed_out)
    assert info.status is JobStatus.failed
    assert info.error.type == "pgq_sa.JobTimeout"
    with engine.connect() as connection:
        effects = sorted(connection.execute(text("SELECT job_id FROM effects")).scalars())
    assert effects == sorted(after)  # nothing of the timed-out attempt; the pool still works


def test_a_handler_that_commits_job_connection_itself_fails_the_attempt(engine, database_url):
    queue = Queue()

    @queue.task("tx.commits", transactional=True, max_attempts=1)
    def commits(job):
        job.connection.execute(text("SELECT 1"))
        job.connection.commit()

    job_id = queue.enqueue(engine, "tx.commits")
    run_worker(make_worker("threads", queue, database_url, size=1), "threads")
    info = queue.get(engine, job_id)
    assert info.status is JobStatus.failed
    assert info.error.type == "pgq_sa.TransactionEnded"
    assert "begin_nested()" in info.error.message


def test_job_connections_leave_the_worker_its_own_share_of_the_pool():
    from sqlalchemy import create_engine

    from pgq_sa._worker.options import worker_options
    from pgq_sa._worker.transactional import connection_slots

    queue = Queue()
    queue.task("tx", transactional=True)(lambda job: None)

    def slots(capacity: int, **pool: int) -> int:
        engine = create_engine("postgresql+psycopg://nobody@localhost/none", **pool)
        options = worker_options(
            queue,
            capacity=capacity,
            capacity_name="threads",
            batch_size=None,
            queues=None,
            heartbeat_interval=5.0,
            lease_timeout=30.0,
            poll_interval=1.0,
            shutdown_timeout=1.0,
        )
        return connection_slots(engine.pool, options)

    assert slots(8) == 7  # 5 + 10 connections, one fetcher's two lanes and six others kept
    assert slots(4) == 4
    assert slots(100, pool_size=50) == 50 + 10 - 8
    assert slots(100, pool_size=2, max_overflow=0) == 1
    assert slots(100, max_overflow=-1) == 100  # unlimited overflow
