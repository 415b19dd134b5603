"""The application of the partition run's workers.

``partition_app:cut_queue`` is what the worker behind the proxy runs; it alone knows
``part.probe``, so probes show when that worker claims again (and how fast a wake-up reaches
it). ``partition_app:healthy_queue`` is the healthy worker's: ``part.hold`` only. Every
execution is recorded by :func:`fault_app.record` on a connection of its own that is never cut
(``FAULT_DATABASE_URL``): the oracle's evidence, not the worker under test.
"""

from __future__ import annotations

import os
import time

import anyio
from fault_app import record

from pgq_sa import Job, Queue

HOLD = "part.hold"
PROBE = "part.probe"


def hold(job: Job) -> dict[str, int]:
    """Run for ``payload["seconds"]``, so a cut finds jobs in flight."""
    record(job)
    time.sleep(float(job.payload.get("seconds", 0)))
    return {"pid": os.getpid()}


async def probe(job: Job) -> dict[str, int]:
    await anyio.to_thread.run_sync(record, job)
    return {"pid": os.getpid()}


cut_queue = Queue()
healthy_queue = Queue()
for _queue in (cut_queue, healthy_queue):
    _queue.task(HOLD)(hold)
cut_queue.task(PROBE)(probe)
