"""Crash rescue with real processes: SIGKILL a worker, SIGSTOP one past its lease (an ordinary
and a transactional job), and a poison job that kills every worker running it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import until_awaited
from sqlalchemy import text
from worker_helpers import start_worker

from pgq_sa import JobSpec, JobStatus, Queue
from pgq_sa import _waiting as waiting

pytestmark = [pytest.mark.timeout(120)]

APPS = str(Path(__file__).parent / "apps")
LEASE = 1.0
BEAT = 0.2

sys.path.insert(0, APPS)
from reliability_app import queue as reliability_queue  # noqa: E402
from sample_app import queue as sample_queue  # noqa: E402


def _worker_process(url, *args: str, app: str = "sample_app:queue") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgq_sa",
            "--database-url",
            url.render_as_string(False),
            "run",
            app,
            "--heartbeat-interval",
            str(BEAT),
            "--lease-timeout",
            str(LEASE),
            "--poll-interval",
            "0.1",
            *args,
        ],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": APPS},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.serial
def test_killed_worker_jobs_are_rescued_within_the_lease(engine, database_url):
    queue = Queue()
    job_id = queue.enqueue(engine, "sample.slow_first", {"seconds": 60})
    process = _worker_process(database_url)
    try:
        _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.running, 30, "start")
        victim = queue.get(engine, job_id)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = time.monotonic()
        rescuer = start_worker(
            "threads", sample_queue, database_url, heartbeat_interval=BEAT, lease_timeout=LEASE
        )
        try:
            _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.succeeded, 30, "rerun")
            rescued_after = time.monotonic() - killed_at
        finally:
            rescuer.stop()
    finally:
        process.kill()
        process.communicate()
    info = queue.get(engine, job_id)
    assert victim.attempts == 1
    assert info.attempts == 2
    assert info.result["attempt"] == 2
    assert info.result["pid"] == os.getpid()
    # rescued within lease_timeout plus one maintenance interval (plus start-up slack)
    assert rescued_after < LEASE + BEAT + 1.5


def test_rescue_past_max_attempts_fails_with_worker_lost(engine, database_url, monkeypatch):
    """...and announces the end to a waiter (whose fallback poll is off here)."""
    monkeypatch.setattr(waiting, "POLL_INTERVAL", 3600.0)
    queue = sample_queue  # the task's own max_attempts=1 applies
    job_id = queue.enqueue(engine, "sample.one_shot", {"seconds": 60})
    process = _worker_process(database_url)
    try:
        _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.running, 30, "start")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        with ThreadPoolExecutor(1) as pool:
            waiter = pool.submit(queue.wait, engine, job_id, 60)
            until_awaited(engine, job_id)
            rescuer = start_worker(
                "asyncio", sample_queue, database_url, heartbeat_interval=BEAT, lease_timeout=LEASE
            )
            try:
                assert waiter.result(timeout=60).status is JobStatus.failed
            finally:
                rescuer.stop()
    finally:
        process.kill()
        process.communicate()
    info = queue.get(engine, job_id)
    assert info.error.type == "pgq_sa.WorkerLost"
    assert "stopped heartbeating" in info.error.message
    with engine.connect() as connection:
        workers = connection.execute(text("SELECT count(*) FROM pgq.workers")).scalar_one()
    assert workers == 0  # the dead worker was forgotten, the rescuer deregistered


def test_a_paused_worker_resumed_after_rescue_changes_nothing(engine, database_url):
    queue = Queue()
    job_id = queue.enqueue(engine, "sample.slow_first", {"seconds": 2})
    process = _worker_process(database_url, "--log-level", "warning")
    try:
        _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.running, 30, "start")
        process.send_signal(signal.SIGSTOP)
        rescuer = start_worker(
            "trio", sample_queue, database_url, heartbeat_interval=BEAT, lease_timeout=LEASE
        )
        try:
            _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.succeeded, 30, "rerun")
        finally:
            rescuer.stop()
        finished = queue.get(engine, job_id)
        process.send_signal(signal.SIGCONT)
        time.sleep(3.5)  # the paused attempt wakes, finishes its 2 s sleep and tries to write
        assert queue.get(engine, job_id) == finished
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.communicate()
    assert finished.result["attempt"] == 2
    assert finished.attempts == 2
    assert "lease lost" in output
    assert process.returncode == 0


def _count(engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar_one())


# The transaction a paused attempt holds open shows as its lock on the effects table.
EFFECT_IN_FLIGHT = (
    "SELECT count(*) FROM pg_locks WHERE relation = 'effects'::regclass "
    "AND mode = 'RowExclusiveLock' AND granted"
)


def test_a_paused_transactional_worker_resumed_after_rescue_changes_nothing(engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE effects (job_id bigint, attempt int, pid int)"))
    queue = reliability_queue
    job_id = queue.enqueue(engine, "reliable.effect", {"seconds": 2})
    process = _worker_process(database_url, "--log-level", "warning", app="reliability_app:queue")
    try:
        # attempt 1 has written its effect, not yet committed: pause it there
        _wait_for(lambda: _count(engine, EFFECT_IN_FLIGHT) == 1, 30, "the first effect")
        process.send_signal(signal.SIGSTOP)
        rescuer = start_worker(
            "trio", queue, database_url, heartbeat_interval=BEAT, lease_timeout=LEASE
        )
        try:
            _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.succeeded, 30, "rerun")
        finally:
            rescuer.stop()
        finished = queue.get(engine, job_id)
        process.send_signal(signal.SIGCONT)
        # the stale attempt wakes, finds its lease lost and rolls its transaction back
        _wait_for(lambda: _count(engine, EFFECT_IN_FLIGHT) == 0, 30, "the stale rollback")
        assert queue.get(engine, job_id) == finished
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.communicate()
    with engine.connect() as connection:
        effects = connection.execute(text("SELECT job_id, attempt, pid FROM effects")).all()
    assert effects == [(job_id, 2, os.getpid())]  # once, by the rescuer's attempt
    assert queue.get(engine, job_id) == finished  # the stale worker's shutdown changed nothing
    assert finished.status is JobStatus.succeeded
    assert finished.attempts == 2
    assert finished.result == {"attempt": 2, "pid": os.getpid()}
    assert "lease lost; its transaction was rolled back" in output
    assert process.returncode == 0


def test_a_poison_job_fails_after_its_attempts_and_spares_the_others(engine, database_url):
    queue = reliability_queue
    poison = queue.enqueue(engine, "reliable.poison")
    normal = queue.enqueue_many(
        engine, [JobSpec("reliable.work", {"n": n, "seconds": 0.05}) for n in range(40)]
    )
    kinds = [("--threads", "4"), ("--async", "--concurrency", "4")]

    def start(kind: tuple[str, ...]) -> subprocess.Popen[str]:
        return _worker_process(
            database_url, "--log-level", "warning", *kind, app="reliability_app:queue"
        )

    def settled() -> bool:
        with engine.connect() as connection:
            states = dict(
                connection.execute(text("SELECT state, count(*) FROM pgq.jobs GROUP BY 1")).all()
            )
        return states == {"succeeded": len(normal), "failed": 1}

    processes = [start(kind) for kind in kinds]
    deaths = 0
    deadline = time.monotonic() + 90
    try:
        while not settled():  # the supervisor: restart whichever worker died
            for number, process in enumerate(processes):
                if process.poll() is not None:
                    process.communicate()
                    deaths += 1
                    processes[number] = start(kinds[number])
            assert time.monotonic() < deadline, f"not settled after {deaths} deaths"
            time.sleep(0.02)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.communicate(timeout=30)
    info = queue.get(engine, poison)
    assert info.status is JobStatus.failed
    assert info.attempts == info.max_attempts == 3
    assert info.error.type == "pgq_sa.WorkerLost"
    assert deaths == info.max_attempts
    for job_id in normal:
        done = queue.get(engine, job_id)
        assert done.status is JobStatus.succeeded
        assert done.attempts <= 1 + deaths  # an innocent job in flight at a death loses one
