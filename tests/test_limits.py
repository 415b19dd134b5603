"""Cluster-wide concurrency and rate limits hold across worker processes, in the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from pgq_sa import JobSpec, Queue

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

APPS = str(Path(__file__).parent / "apps")


def _workers(url, count: int, *args: str) -> list[subprocess.Popen[str]]:
    dsn = url.set(drivername="postgresql").render_as_string(False)
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgq_sa",
                "--database-url",
                dsn,
                "run",
                "limits_app:queue",
                "--poll-interval",
                "0.1",
                "--log-level",
                "warning",
                *args,
            ],
            cwd=APPS,
            env={**os.environ, "PYTHONPATH": APPS, "LIMITS_TEST_DSN": dsn},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]


def _stop(processes: list[subprocess.Popen[str]]) -> list[str]:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [p.returncode for p in processes] == [0] * len(processes), outputs
    return outputs


def _left(engine, task: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT count(*) FROM pgq.jobs WHERE task = :t AND state <> 'succeeded'"),
            {"t": task},
        ).scalar_one()


def test_concurrency_limit_holds_across_processes_and_is_reached(engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE gauge (current int, peak int)"))
        connection.execute(text("INSERT INTO gauge VALUES (0, 0)"))
    Queue().enqueue_many(engine, [JobSpec("limited.work") for _ in range(60)])
    processes = [
        *_workers(database_url, 2, "--threads", "8", "--batch-size", "4"),
        *_workers(database_url, 1, "--async", "--concurrency", "8"),
    ]
    try:
        deadline = time.monotonic() + 120
        while _left(engine, "limited.work") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        _stop(processes)
    with engine.connect() as connection:
        current, peak = connection.execute(text("SELECT current, peak FROM gauge")).one()
    assert _left(engine, "limited.work") == 0
    assert current == 0
    assert peak == 3  # never above the limit, and the limit was reached


def test_rate_limit_holds_across_processes(engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE starts (at timestamptz)"))
    Queue().enqueue_many(engine, [JobSpec("paced.work") for _ in range(400)])
    processes = [
        *_workers(database_url, 2, "--threads", "8"),
        *_workers(database_url, 1, "--async", "--backend", "trio"),
    ]
    try:
        time.sleep(8)
    finally:
        _stop(processes)
    with engine.connect() as connection:
        first = connection.execute(text("SELECT min(at) FROM starts")).scalar_one()
        in_five_seconds = connection.execute(
            text(
                "SELECT count(*) FROM starts WHERE at >= :a + interval '1 second' "
                "AND at < :a + interval '6 seconds'"
            ),
            {"a": first},
        ).scalar_one()
    assert abs(in_five_seconds - 100) <= 10, in_five_seconds  # 20/s over 5 s, within 10 %
