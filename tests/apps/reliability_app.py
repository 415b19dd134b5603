"""Tasks for the reliability tests, run by real `pgq-sa run` processes: a transactional effect
whose first attempt lingers, a job that kills its own process, and ordinary work."""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from pgq_sa import Queue

queue = Queue()


@queue.task("reliable.effect", transactional=True, max_attempts=3)
def effect(job):
    """Write the effect, then (first attempt only) linger long enough to be paused."""
    job.connection.execute(
        text("INSERT INTO effects VALUES (:job, :attempt, :pid)"),
        {"job": job.id, "attempt": job.attempt, "pid": os.getpid()},
    )
    if job.attempt == 1:
        time.sleep(job.payload["seconds"])
    return {"attempt": job.attempt, "pid": os.getpid()}


@queue.task("reliable.poison", max_attempts=3)
def poison(job):
    """Kill the worker process running it, every time."""
    os._exit(1)


@queue.task("reliable.work")
def work(job):
    time.sleep(job.payload["seconds"])
    return {"n": job.payload["n"], "pid": os.getpid()}
