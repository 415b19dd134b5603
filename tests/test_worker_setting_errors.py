"""A worker told to drain (``until_empty``) stops with the setting problem, explained, instead of
retrying forever; a long-running worker keeps retrying and says so once (issue 16). And a worker
says which driver it runs on when its URL named another.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import driver_url
from worker_helpers import KINDS, make_worker, run_worker

from pgq_sa import DatabaseMissing, DatabaseUnreachable, Queue, SchemaMissing

APPS = str(Path(__file__).parent / "apps")


def _queue() -> Queue:
    queue = Queue()

    @queue.task("t")
    def handler(job):
        return None

    return queue


def _nowhere(server_url):
    return server_url.set(host="127.0.0.1", port=1, query={})


@pytest.mark.parametrize("kind", KINDS)
def test_until_empty_stops_with_the_setting_problem(kind, server_url, empty_database_url):
    cases = [
        (empty_database_url, SchemaMissing, "pgq-sa db upgrade"),
        (server_url.set(database="pgq_sa_no_such_database"), DatabaseMissing, "createdb"),
        (_nowhere(server_url), DatabaseUnreachable, "127.0.0.1"),
    ]
    for url, expected, fix in cases:
        worker = make_worker(kind, _queue(), url)
        with pytest.raises(expected, match=fix):
            run_worker(worker, kind, until_empty=True)


def test_the_command_line_says_it_in_one_line(empty_database_url):
    url = empty_database_url.render_as_string(hide_password=False)
    command = ["-m", "pgq_sa", "--database-url", url, "run", "sample_app:queue", "--until-empty"]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": APPS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pgq-sa db upgrade" in done.stderr.strip().splitlines()[-1]


def test_a_worker_says_which_driver_it_runs_on(engine, database_url, caplog):
    queue = _queue()
    queue.enqueue(engine, "t")
    url = driver_url(database_url, "psycopg2").render_as_string(hide_password=False)
    worker = make_worker("threads", queue, url)
    with caplog.at_level(logging.INFO, logger="pgq_sa.worker"):
        run_worker(worker, "threads")
    (started,) = [r.getMessage() for r in caplog.records if "started on" in r.getMessage()]
    assert "psycopg on postgresql+psycopg://" in started
    assert "the URL names psycopg2, but workers given a URL run on psycopg" in started


def test_a_long_running_worker_says_each_problem_once_even_without_logging(empty_database_url):
    """No logging configured (a plain script): the problem still reaches stderr, once, with the
    fix; the worker keeps retrying (the schema may be on its way) until stopped."""
    url = empty_database_url.render_as_string(hide_password=False)
    script = f"""
import threading, time
from pgq_sa import Queue, ThreadWorker
queue = Queue()
@queue.task("t")
def handler(job):
    return None
worker = ThreadWorker(queue, {url!r}, handle_signals=False)
threading.Timer(3.0, worker.stop).start()  # several retries in three seconds
worker.run()
print("stopped")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("pgq_sa: register failed")
    assert "pgq-sa db upgrade" in lines[0]
