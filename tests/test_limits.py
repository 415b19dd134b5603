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

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow, pytest.mark.serial]

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


def _wait_for(engine, query: str, parameters: dict[str, object], deadline: float = 90.0) -> None:
    """Poll until ``query`` counts at least one row; fail after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    while True:
        with engine.connect() as connection:
            if connection.execute(text(query), parameters).scalar_one():
                return
        assert time.monotonic() < give_up, f"gave up waiting for: {query}"
        time.sleep(0.1)


def _when_registered(engine, count: int, deadline: float = 90.0) -> object:
    """The database time at which ``count`` workers are registered."""
    give_up = time.monotonic() + deadline
    while True:
        with engine.connect() as connection:
            registered, now = connection.execute(
                text("SELECT count(*), now() FROM pgq.workers")
            ).one()
        if registered >= count:
            return now
        assert time.monotonic() < give_up, f"only {registered} of {count} workers registered"
        time.sleep(0.1)


def test_rate_limit_holds_across_processes(engine, database_url):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE starts (at timestamptz)"))
    Queue().enqueue_many(engine, [JobSpec("paced.work") for _ in range(400)])
    processes = [
        *_workers(database_url, 2, "--threads", "8"),
        *_workers(database_url, 1, "--async", "--backend", "trio"),
    ]
    try:
        # The window opens once all three processes claim (their start-up time varies with load)
        # and closes once a start 6 s later is recorded.
        window_start = _when_registered(engine, len(processes))
        _wait_for(
            engine,
            "SELECT count(*) FROM starts WHERE at >= :a + interval '6 seconds'",
            {"a": window_start},
        )
    finally:
        _stop(processes)
    with engine.connect() as connection:
        in_five_seconds = connection.execute(
            text(
                "SELECT count(*) FROM starts WHERE at >= :a + interval '1 second' "
                "AND at < :a + interval '6 seconds'"
            ),
            {"a": window_start},
        ).scalar_one()
    assert abs(in_five_seconds - 100) <= 10, in_five_seconds  # 20/s over 5 s, within 10 %
