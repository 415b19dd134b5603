"""A tiny application for the command-line tests: `pgq-sa run sample_app:queue`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from pgq_sa import Queue

queue = Queue()


@queue.task("sample.sleep")
def sleep(job):
    started = job.payload.get("started")
    if started:  # a file to create once the handler runs, for tests that must know it did
        Path(started).touch()
    time.sleep(job.payload["seconds"])
    return {"slept": job.payload["seconds"], "pid": os.getpid()}


@queue.task("sample.async")
async def async_sleep(job):
    await anyio.sleep(job.payload["seconds"])
    return "async done"


not_a_queue = 42


@queue.task("sample.slow_first", max_attempts=3)
def slow_first(job):
    """The first attempt is slow (long enough to be killed or paused); later ones are quick."""
    if job.attempt == 1:
        time.sleep(job.payload["seconds"])
        return {"attempt": 1, "pid": os.getpid()}
    return {"attempt": job.attempt, "pid": os.getpid()}


@queue.task("sample.one_shot", max_attempts=1)
def one_shot(job):
    time.sleep(job.payload["seconds"])
