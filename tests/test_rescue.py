"""Crash rescue with real processes: SIGKILL a worker, SIGSTOP one past its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker_helpers import start_worker

from pgq_sa import JobStatus, Queue

pytestmark = [pytest.mark.timeout(120)]

APPS = str(Path(__file__).parent / "apps")
LEASE = 1.0
BEAT = 0.2

sys.path.insert(0, APPS)
from sample_app import queue as sample_queue  # noqa: E402


def _worker_process(url, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgq_sa",
            "--database-url",
            url.render_as_string(False),
            "run",
            "sample_app:queue",
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


def test_rescue_past_max_attempts_fails_with_worker_lost(engine, database_url):
    queue = sample_queue  # the task's own max_attempts=1 applies
    job_id = queue.enqueue(engine, "sample.one_shot", {"seconds": 60})
    process = _worker_process(database_url)
    try:
        _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.running, 30, "start")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        rescuer = start_worker(
            "asyncio", sample_queue, database_url, heartbeat_interval=BEAT, lease_timeout=LEASE
        )
        try:
            _wait_for(lambda: queue.get(engine, job_id).status is JobStatus.failed, 30, "fail")
        finally:
            rescuer.stop()
    finally:
        process.kill()
        process.communicate()
    info = queue.get(engine, job_id)
    assert info.error.type == "pgq_sa.WorkerLost"
    assert "stopped heartbeating" in info.error.message
    with engine.connect() as connection:
        from sqlalchemy import text

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
