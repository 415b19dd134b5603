"""Timeouts, cancellation of running jobs, and named queues, on every worker kind."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from click.testing import CliRunner
from helpers import count_jobs
from worker_helpers import KINDS, make_worker, run_worker, start_worker

from pgq_sa import JobSpec, JobStatus, Queue
from pgq_sa import _decisions as decisions
from pgq_sa._cli import cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return str(request.param)


def _wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def test_async_handler_is_cancelled_at_its_timeout(kind, engine, database_url, monkeypatch):
    monkeypatch.setattr(decisions, "BACKOFF_BASE", 60.0)
    queue = Queue()
    reached_end = threading.Event()

    @queue.task("sleepy", timeout=0.3, max_attempts=2)
    async def sleepy(job):
        await anyio.sleep(30)
        reached_end.set()

    job_id = queue.enqueue(engine, "sleepy")
    started = time.monotonic()
    run_worker(make_worker(kind, queue, database_url), kind)
    assert time.monotonic() - started < 10
    info = queue.get(engine, job_id)
    assert not reached_end.is_set()
    assert info.status is JobStatus.queued  # the usual retry rules: one attempt left
    assert info.attempts == 1
    assert "timeout" in info.error.message
    assert info.error.type == "pgq_sa.JobTimeout"


def test_sync_handler_sees_its_deadline_and_is_recorded_as_timed_out(kind, engine, database_url):
    queue = Queue()
    saw: list[bool] = []

    @queue.task("polite", timeout=0.3, max_attempts=1)
    def polite(job):
        deadline = time.monotonic() + 20
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        saw.append(job.cancelled)
        return "stopped early"

    job_id = queue.enqueue(engine, "polite")
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get(engine, job_id)
    assert saw == [True]
    assert info.status is JobStatus.failed
    assert "timeout" in info.error.message
    assert info.result is None


@pytest.mark.serial
def test_cancelling_a_running_job_reaches_its_worker_within_a_second(kind, engine, database_url):
    queue = Queue()
    started = threading.Event()
    async_started = threading.Event()
    finished_normally: list[str] = []
    cancelled_at: list[float] = []

    @queue.task("long_sync")
    def long_sync(job):
        started.set()
        while not job.cancelled:
            time.sleep(0.005)
        cancelled_at.append(time.monotonic())

    @queue.task("long_async")
    async def long_async(job):
        async_started.set()
        await anyio.sleep(60)
        finished_normally.append("async")

    sync_id = queue.enqueue(engine, "long_sync")
    async_id = queue.enqueue(engine, "long_async")
    running = start_worker(kind, queue, database_url, heartbeat_interval=2.0, lease_timeout=10)
    try:
        assert started.wait(10)
        assert async_started.wait(10)
        asked = time.monotonic()
        assert queue.cancel(engine, sync_id) is True
        assert queue.cancel(engine, async_id) is True
        _wait_for(lambda: queue.get(engine, async_id).status is JobStatus.cancelled, 5, "async")
        _wait_for(lambda: queue.get(engine, sync_id).status is JobStatus.cancelled, 5, "sync")
        assert cancelled_at[0] - asked < 1.0  # by NOTIFY, not the 2 s heartbeat
    finally:
        running.stop()
    assert finished_normally == []
    info = queue.get(engine, sync_id)
    assert info.error.type == "pgq_sa.JobCancelled"


def test_cancel_by_polling_when_the_notify_is_missed(engine, database_url):
    queue = Queue()
    started = threading.Event()

    @queue.task("long")
    def long(job):
        started.set()
        while not job.cancelled:
            time.sleep(0.005)

    job_id = queue.enqueue(engine, "long")
    running = start_worker("threads", queue, database_url, heartbeat_interval=0.3)
    try:
        assert started.wait(10)
        with engine.begin() as connection:  # flag it without the NOTIFY
            from sqlalchemy import text

            connection.execute(text("UPDATE pgq.jobs SET cancel_requested = true"))
        _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.cancelled, 5, "poll")
    finally:
        running.stop()


def test_cli_cancels_a_running_job(engine, database_url):
    queue = Queue()
    started = threading.Event()

    @queue.task("long")
    async def long(job):
        started.set()
        await anyio.sleep(60)

    job_id = queue.enqueue(engine, "long")
    running = start_worker("asyncio", queue, database_url)
    try:
        assert started.wait(10)
        result = CliRunner().invoke(
            cli,
            ["--database-url", database_url.render_as_string(False), "jobs", "cancel", str(job_id)],
        )
        assert result.exit_code == 0, result.output
        _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.cancelled, 5, "cancel")
    finally:
        running.stop()


def test_workers_take_only_their_queues(kind, engine, database_url):
    queue = Queue()
    seen: list[str] = []

    @queue.task("t")
    def handler(job):
        seen.append(job.queue)

    queue.enqueue_many(engine, [JobSpec("t", queue=name) for name in ("a", "b", "c", "a")])
    run_worker(make_worker(kind, queue, database_url, queues=["a", "c"]), kind)
    assert sorted(seen) == ["a", "a", "c"]
    assert count_jobs(engine, queue="b", state="queued") == 1


def test_pause_holds_a_queue_cluster_wide_and_resume_releases_it(kind, engine, database_url):
    queue = Queue()
    ran: list[str] = []

    @queue.task("t")
    def handler(job):
        ran.append(job.queue)

    queue.pause(engine, "media")
    queue.enqueue_many(engine, [JobSpec("t", queue="media"), JobSpec("t", queue="default")])
    running = start_worker(kind, queue, database_url, poll_interval=30.0)
    try:
        _wait_for(lambda: ran == ["default"], 10, "the unpaused queue")
        time.sleep(0.5)
        assert ran == ["default"]
        queue.resume(engine, "media")  # wakes the workers by NOTIFY
        _wait_for(lambda: sorted(ran) == ["default", "media"], 5, "the resumed queue")
    finally:
        running.stop()


def test_queues_cli_lists_pauses_and_resumes(engine, database_url):
    import json

    url = database_url.render_as_string(False)
    runner = CliRunner()
    Queue().enqueue_many(engine, [JobSpec("t", queue="media"), JobSpec("t")])
    assert runner.invoke(cli, ["--database-url", url, "queues", "pause", "media"]).exit_code == 0
    listed = runner.invoke(cli, ["--database-url", url, "queues", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["media"]["paused"] is True
    assert rows["media"]["queued"] == 1
    assert rows["default"]["paused"] is False
    plain = runner.invoke(cli, ["--database-url", url, "queues", "list"])
    assert "media" in plain.output
    assert "paused" in plain.output


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("escape", [SystemExit, KeyboardInterrupt])
def test_whatever_a_handler_lets_escape_fails_its_attempt_and_the_worker_goes_on(
    kind, escape, engine, database_url
):
    """Decided once for both workers: anything that escapes a handler, BaseException included,
    fails that attempt (recorded with its type); the worker keeps running the other jobs."""
    queue = Queue()

    @queue.task("escapes", max_attempts=1)
    def escapes(job):
        raise escape("leaving")

    @queue.task("fine")
    def fine(job):
        return "ok"

    bad = queue.enqueue(engine, "escapes")
    good = [queue.enqueue(engine, "fine") for _ in range(5)]
    run_worker(make_worker(kind, queue, database_url), kind)
    failed = queue.get(engine, bad)
    assert failed.status is JobStatus.failed
    assert failed.error.type == escape.__name__
    assert {queue.get(engine, job_id).status for job_id in good} == {JobStatus.succeeded}
