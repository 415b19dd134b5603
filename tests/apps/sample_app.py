"""A tiny application for the command-line tests: `pgq-sa run sample_app:queue`."""

from __future__ import annotations

import os
import time

import anyio

from pgq_sa import Queue

queue = Queue()


@queue.task("sample.sleep")
def sleep(job):
    time.sleep(job.payload["seconds"])
    return {"slept": job.payload["seconds"], "pid": os.getpid()}


@queue.task("sample.async")
async def async_sleep(job):
    await anyio.sleep(job.payload["seconds"])
    return "async done"


not_a_queue = 42
