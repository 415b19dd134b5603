"""The soak run's application: `pgq-sa run soak_app:queue`. Light handlers of both kinds, and
retention short enough (``SOAK_KEEP_SUCCEEDED`` seconds) that pruning runs all along."""

from __future__ import annotations

import os
import time

import anyio

from pgq_sa import Job, Queue

queue = Queue(keep_succeeded=float(os.environ.get("SOAK_KEEP_SUCCEEDED", "60")))


@queue.task("soak.sync")
def sync_job(job: Job) -> dict[str, int]:
    time.sleep(0.001)
    return {"n": job.payload["n"]}


@queue.task("soak.async")
async def async_job(job: Job) -> None:
    await anyio.sleep(0.001)
