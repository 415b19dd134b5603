"""The workflow proof's application: `pgq-sa run workflow_app:queue` in three worker processes.

Every attempt records its start (``clock_timestamp()``, on the database's clock, in its own
committed transaction) in ``wf_attempts`` before it does anything else: ``started_at`` on the job
row is overwritten by each new attempt, this table keeps them all. A step then fails on some
attempts, decided from its id and attempt number, so the test knows nothing in advance.
"""

from __future__ import annotations

import hashlib
import os
import time

import anyio
import anyio.to_thread
from sqlalchemy import text

from pgq_sa import Queue
from pgq_sa._config import make_engine

queue = Queue()
FAIL_PERCENT = int(os.environ.get("WF_FAIL_PERCENT", "15"))
RECORD = text(
    "INSERT INTO wf_attempts (job_id, attempt, started, pid) "
    "VALUES (:job, :attempt, clock_timestamp(), :pid)"
)
_engine = None


def _record(job_id: int, attempt: int) -> None:
    global _engine
    if _engine is None:
        _engine = make_engine(os.environ["PGQ_SA_DATABASE_URL"], pool_size=4)
    with _engine.begin() as connection:
        connection.execute(RECORD, {"job": job_id, "attempt": attempt, "pid": os.getpid()})


def _unlucky(job_id: int, attempt: int) -> bool:
    digest = hashlib.sha256(f"{job_id}:{attempt}".encode()).digest()
    return digest[0] * 100 // 256 < FAIL_PERCENT


@queue.task("wf.step", max_attempts=2)
def step(job):
    _record(job.id, job.attempt)
    time.sleep(0.001 * (job.id % 5))
    if _unlucky(job.id, job.attempt):
        raise RuntimeError(f"step {job.id} attempt {job.attempt} failed on purpose")
    return {"id": job.id, "upstream": sorted(job.upstream)}


@queue.task("wf.step_async", max_attempts=2)
async def step_async(job):
    await anyio.to_thread.run_sync(_record, job.id, job.attempt)
    await anyio.sleep(0.001 * (job.id % 5))
    if _unlucky(job.id, job.attempt):
        raise RuntimeError(f"step {job.id} attempt {job.attempt} failed on purpose")
    return {"id": job.id, "upstream": sorted(job.upstream)}
