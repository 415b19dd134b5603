"""Conformance: every scenario on ThreadWorker, AsyncWorker/asyncio and AsyncWorker/trio."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import anyio
import pytest
from helpers import count_jobs, wait_for_listener
from sqlalchemy import text
from worker_helpers import KINDS, make_worker, run_worker, start_worker

from pgq_sa import AsyncWorker, JobSpec, JobStatus, Queue, Retry, ThreadWorker
from pgq_sa import _decisions as decisions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return str(request.param)


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(decisions, "BACKOFF_BASE", 0.05)


def test_sync_and_async_handlers_run_and_store_results(kind, engine, database_url):
    queue = Queue()

    @queue.task("double")
    def double(job):
        return {"twice": job.payload["n"] * 2, "attempt": job.attempt}

    @queue.task("shout")
    async def shout(job):
        await anyio.sleep(0)
        return job.payload.upper()

    ids = queue.enqueue_many(engine, [JobSpec("double", {"n": n}) for n in range(20)])
    loud = queue.enqueue(engine, "shout", "hello")
    run_worker(make_worker(kind, queue, database_url), kind)
    for n, job_id in enumerate(ids):
        info = queue.get(engine, job_id)
        assert info.status is JobStatus.succeeded
        assert info.result == {"twice": n * 2, "attempt": 1}
        assert info.attempts == 1
        assert info.started_at is not None
        assert info.finished_at >= info.started_at
    assert queue.get(engine, loud).result == "HELLO"


def test_failures_store_error_and_retry_with_backoff_until_failed(
    kind, engine, database_url, fast_backoff
):
    queue = Queue()
    calls: list[int] = []

    @queue.task("boom", max_attempts=3)
    def boom(job):
        calls.append(job.attempt)
        raise ValueError(f"bad input on attempt {job.attempt}")

    job_id = queue.enqueue(engine, "boom")
    deadline = time.monotonic() + 30
    while queue.get(engine, job_id).status is not JobStatus.failed:
        run_worker(make_worker(kind, queue, database_url), kind)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = queue.get(engine, job_id)
    assert calls == [1, 2, 3]
    assert info.attempts == 3
    assert info.error.type == "ValueError"
    assert info.error.message == "bad input on attempt 3"
    assert "Traceback" in info.error.traceback
    assert "raise ValueError" in info.error.traceback


def test_retry_request_sets_the_delay(kind, engine, database_url):
    queue = Queue()

    @queue.task("later", max_attempts=5)
    def later(job):
        if job.attempt == 1:
            raise Retry(delay=timedelta(seconds=120))
        return "done"

    job_id = queue.enqueue(engine, "later")
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get(engine, job_id)
    assert info.status is JobStatus.queued
    assert info.attempts == 1
    assert timedelta(seconds=110) < info.run_at - info.created_at < timedelta(seconds=130)
    with engine.begin() as connection:
        connection.execute(text("UPDATE pgq.jobs SET run_at = now()"))
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get(engine, job_id)
    assert (info.status, info.attempts, info.result) == (JobStatus.succeeded, 2, "done")


def test_retry_when_attempts_are_used_up_fails(kind, engine, database_url):
    queue = Queue()

    @queue.task("again", max_attempts=1)
    def again(job):
        raise Retry(delay=0)

    job_id = queue.enqueue(engine, "again")
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get(engine, job_id)
    assert info.status is JobStatus.failed
    assert "attempts are used" in info.error.message


def test_unstorable_result_fails_the_job_clearly(kind, engine, database_url):
    queue = Queue()

    @queue.task("weird", max_attempts=1)
    def weird(job):
        return {"when": object()}

    job_id = queue.enqueue(engine, "weird")
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get(engine, job_id)
    assert info.status is JobStatus.failed
    assert "cannot be stored as JSON" in info.error.message


def test_priority_order(kind, engine, database_url):
    queue = Queue()
    order: list[int] = []

    @queue.task("p")
    def record(job):
        order.append(job.payload)

    queue.enqueue_many(engine, [JobSpec("p", p, priority=p) for p in (0, 5, -3, 10, 5, 1)])
    run_worker(make_worker(kind, queue, database_url, size=1, batch_size=1), kind)
    assert order == [10, 5, 5, 1, 0, -3]


def test_delayed_job_waits_for_its_time(kind, engine, database_url):
    queue = Queue()
    started: list[float] = []

    @queue.task("delayed")
    def delayed(job):
        started.append(time.time())

    enqueued = time.time()
    queue.enqueue(engine, "delayed", delay=1.5)
    running = start_worker(kind, queue, database_url, poll_interval=5.0)
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.02)
    running.stop()
    assert started, "the delayed job never ran"
    assert 1.4 <= started[0] - enqueued < 2.5  # woken by its run_at, not the 5 s poll


def test_unknown_task_stays_queued(kind, engine, database_url):
    queue = Queue()

    @queue.task("known")
    def known(job):
        return None

    stranger = queue.enqueue(engine, "nobody.knows.me")
    queue.enqueue(engine, "known")
    run_worker(make_worker(kind, queue, database_url), kind)
    assert queue.get(engine, stranger).status is JobStatus.queued
    assert count_jobs(engine, state="succeeded") == 1


def test_idle_worker_wakes_on_notify_not_poll(kind, engine, database_url):
    queue = Queue()
    started = threading.Event()

    @queue.task("ping")
    def ping(job):
        started.set()

    running = start_worker(kind, queue, database_url, poll_interval=30.0)
    wait_for_listener(engine)  # registered, claimed nothing, and LISTENing
    queue.enqueue(engine, "ping")
    woke = started.wait(5)
    running.stop()
    assert woke, "the worker did not wake on NOTIFY within 5 s (poll interval is 30 s)"


def test_wait_returns_the_finished_job(kind, engine, database_url):
    queue = Queue()

    @queue.task("slow")
    def slow(job):
        time.sleep(0.3)
        return "finished"

    job_id = queue.enqueue(engine, "slow")
    running = start_worker(kind, queue, database_url)
    info = queue.wait(engine, job_id, timeout=20)
    running.stop()
    assert info.status is JobStatus.succeeded
    assert info.result == "finished"


def test_wait_times_out_and_knows_unknown_jobs(engine):
    queue = Queue()
    job_id = queue.enqueue(engine, "never.runs")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        queue.wait(engine, job_id, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3
    with pytest.raises(LookupError):
        queue.wait(engine, 99999999, timeout=1)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_wait_async(backend, engine, database_url):
    queue = Queue()

    @queue.task("t")
    async def handler(job):
        return job.payload + 1

    job_id = queue.enqueue(engine, "t", 41)

    async def main():
        worker = AsyncWorker(queue, database_url, poll_interval=0.2)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            info = await queue.wait_async(engine, job_id, timeout=20)
            worker.stop()
        return info

    info = anyio.run(main, backend=backend)
    assert info.result == 42


def test_graceful_stop_lets_running_jobs_finish(kind, engine, database_url):
    queue = Queue()
    entered = threading.Semaphore(0)

    @queue.task("steady")
    def steady(job):
        entered.release()
        time.sleep(0.5)
        return "completed"

    ids = queue.enqueue_many(engine, [JobSpec("steady") for _ in range(3)])
    running = start_worker(kind, queue, database_url, size=3)
    for _ in range(3):
        assert entered.acquire(timeout=10)
    running.stop()
    assert [queue.get(engine, i).status for i in ids] == [JobStatus.succeeded] * 3
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pgq.workers")).scalar_one() == 0


def test_stop_hands_back_what_did_not_finish(kind, engine, database_url):
    queue = Queue()
    entered = threading.Event()
    release = threading.Event()

    @queue.task("stuck")
    def stuck(job):
        entered.set()
        release.wait(20)

    @queue.task("stuck_async")
    async def stuck_async(job):
        await anyio.sleep(20)

    sync_id = queue.enqueue(engine, "stuck")
    async_id = queue.enqueue(engine, "stuck_async")
    queued = queue.enqueue_many(engine, [JobSpec("stuck", priority=-1) for _ in range(3)])
    running = start_worker(kind, queue, database_url, size=2, batch_size=5, shutdown_timeout=0.5)
    assert entered.wait(10)
    time.sleep(0.3)
    started = time.monotonic()
    running.stop()
    release.set()
    assert time.monotonic() - started < 10
    for job_id in (sync_id, async_id, *queued):
        info = queue.get(engine, job_id)
        assert info.status is JobStatus.queued, (job_id, info)
        assert info.attempts == 0  # an interrupted attempt is not counted


def test_stop_from_another_thread_before_and_during_run(kind, engine, database_url):
    queue = Queue()

    @queue.task("t")
    def handler(job):
        return None

    worker = make_worker(kind, queue, database_url)
    worker.stop()
    started = time.monotonic()
    run_worker(worker, kind, until_empty=False)  # returns at once: stop came first
    assert time.monotonic() - started < 5
    running = start_worker(kind, queue, database_url)
    time.sleep(0.5)
    running.stop(timeout=10)


def test_worker_options_are_validated_before_connecting(engine):
    queue = Queue()
    with pytest.raises(ValueError, match="no tasks"):
        ThreadWorker(queue, engine)

    @queue.task("t")
    def handler(job):
        return None

    with pytest.raises(ValueError, match="threads must be 1 or more"):
        ThreadWorker(queue, engine, threads=0)
    with pytest.raises(ValueError, match="at least twice"):
        ThreadWorker(queue, engine, heartbeat_interval=10, lease_timeout=15)
    with pytest.raises(TypeError, match="list of queue names"):
        AsyncWorker(queue, engine, queues="default")
    with pytest.raises(TypeError, match="bind"):
        AsyncWorker(queue, 42)
    with pytest.raises(TypeError, match="Queue"):
        ThreadWorker("pgq", engine)


def test_retention_prunes_finished_jobs_in_batches(kind, engine, database_url):
    from pgq_sa._worker import services

    queue = Queue(keep_succeeded=3600, keep_failed=3600)

    @queue.task("ok")
    def ok(job):
        return None

    @queue.task("bad", max_attempts=1)
    def bad(job):
        raise RuntimeError("kept for inspection")

    queue.enqueue_many(engine, [JobSpec("ok") for _ in range(2500)] + [JobSpec("bad")])
    run_worker(make_worker(kind, queue, database_url, size=16, batch_size=100), kind)
    assert count_jobs(engine, state="succeeded") == 2500
    queue.keep_succeeded = 0.2
    running = start_worker(kind, queue, database_url, heartbeat_interval=0.2)
    deadline = time.monotonic() + 30
    while count_jobs(engine, state="succeeded") and time.monotonic() < deadline:
        time.sleep(0.1)
    running.stop()
    assert count_jobs(engine, state="succeeded") == 0
    assert count_jobs(engine, state="failed") == 1
    assert services.PRUNE_BATCH < 2500  # it took more than one bounded batch


def test_a_thread_worker_that_never_registered_leaves_no_connection(
    empty_database_url, admin_engine
):
    """Stopped while its registration fails (the schema is not installed), the worker still
    closes every connection of the engine it made from the URL."""
    queue = Queue()
    queue.task("noop")(lambda job: None)
    worker = ThreadWorker(queue, empty_database_url.render_as_string(hide_password=False))
    failed = threading.Event()

    class FirstFailure(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("register failed"):
                failed.set()

    watcher = FirstFailure()
    logging.getLogger("pgq_sa.worker").addHandler(watcher)
    runner = threading.Thread(target=worker.run)
    try:
        runner.start()
        assert failed.wait(30), "the registration never failed"
        worker.stop()
        runner.join(30)
        assert not runner.is_alive()
    finally:
        logging.getLogger("pgq_sa.worker").removeHandler(watcher)
    deadline = time.monotonic() + 10
    while True:
        with admin_engine.connect() as connection:
            left = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                {"name": empty_database_url.database},
            ).scalar_one()
        if left == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == 0, f"{left} connections left open"
