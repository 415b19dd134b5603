"""The application the fault run's worker processes serve: `pgq-sa run fault_app:queue`
(threads, trio) and `fault_app:asyncio_queue` (asyncio).

Every execution is recorded in ``fault_runs`` (job id, attempt, worker pid) on the handler's own
connection, committed before the handler returns: at-least-once evidence the oracle reads. The
transactional tasks (when the installed pgq_sa has ``transactional=True``: the switch is
``TRANSACTIONAL``) also write an effect through ``job.connection``, inside the transaction that
records the job's completion, so the oracle can check each exists exactly once per job. The async
one needs an AsyncConnection, so only the asyncio workers' queue declares it.

Settings come from the environment, because the workers are separate processes:
``FAULT_DATABASE_URL`` (where the side tables live) and ``FAULT_WORK_SECONDS`` (how long a
handler holds its job after recording it, so kills find jobs in flight).
"""

from __future__ import annotations

import inspect
import os
import random
import time
from typing import Any

import anyio
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from pgq_sa import Job, Queue

RECORD_TASKS = ("fault.sync", "fault.async")
EFFECT_TASK = "fault.effect"
ASYNC_EFFECT_TASK = "fault.effect_async"  # only asyncio workers know it
SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS fault_runs ("
    " job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (job_id, attempt, pid))",
    "CREATE TABLE IF NOT EXISTS fault_effects ("
    " job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL)",
)

# The switch for the exactly-once part: on when pgq_sa's Queue.task takes transactional=True.
TRANSACTIONAL = "transactional" in inspect.signature(Queue.task).parameters

queue = Queue()  # threads and trio workers
asyncio_queue = Queue()  # asyncio workers: also the async transactional task
_engine: Engine | None = None


def _side_engine() -> Engine:
    global _engine
    if _engine is None:
        url = os.environ["FAULT_DATABASE_URL"]
        _engine = create_engine(url, pool_size=4, max_overflow=60, pool_pre_ping=True)
    return _engine


def record(job: Job) -> None:
    """Commit one row for this execution; retry through terminated connections and restarts (a
    commit whose answer was lost may be sent twice, hence ON CONFLICT DO NOTHING)."""
    deadline = time.monotonic() + 120
    delay = 0.05
    while True:
        try:
            with _side_engine().begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO fault_runs (job_id, attempt, pid) VALUES (:j, :a, :p) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {"j": job.id, "a": job.attempt, "p": os.getpid()},
                )
            return
        except DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _work_seconds() -> float:
    limit = float(os.environ.get("FAULT_WORK_SECONDS", "0.02"))
    return random.uniform(0, limit)


def sync_job(job: Job) -> dict[str, int]:
    record(job)
    time.sleep(_work_seconds())
    return {"pid": os.getpid()}


async def async_job(job: Job) -> dict[str, int]:
    await anyio.to_thread.run_sync(record, job)
    await anyio.sleep(_work_seconds())
    return {"pid": os.getpid()}


_effect_insert = text("INSERT INTO fault_effects (job_id, attempt, pid) VALUES (:j, :a, :p)")


def effect_job(job: Any) -> dict[str, int]:
    """Effect through ``job.connection`` (a sync Connection), committed with the completion."""
    record(job)
    time.sleep(_work_seconds())
    job.connection.execute(_effect_insert, {"j": job.id, "a": job.attempt, "p": os.getpid()})
    return {"pid": os.getpid()}


async def async_effect_job(job: Any) -> dict[str, int]:
    """The same through an AsyncConnection (asyncio workers only)."""
    await anyio.to_thread.run_sync(record, job)
    await anyio.sleep(_work_seconds())
    values = {"j": job.id, "a": job.attempt, "p": os.getpid()}
    await job.connection.execute(_effect_insert, values)
    return {"pid": os.getpid()}


for _queue in (queue, asyncio_queue):
    _queue.task(RECORD_TASKS[0])(sync_job)
    _queue.task(RECORD_TASKS[1])(async_job)
    if TRANSACTIONAL:
        _queue.task(EFFECT_TASK, transactional=True)(effect_job)  # type: ignore[call-arg]
if TRANSACTIONAL:
    asyncio_queue.task(ASYNC_EFFECT_TASK, transactional=True)(async_effect_job)  # type: ignore[call-arg]
