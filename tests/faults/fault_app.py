"""The application the fault run's worker processes serve: `pgq-sa run fault_app:queue`.

Every execution is recorded in ``fault_runs`` (job id, attempt, worker pid) on the handler's own
connection, committed before the handler returns: at-least-once evidence the oracle reads. The
``fault.effect`` task also writes its effect through ``job.connection`` inside the transaction
that records the job's completion (when the installed pgq_sa has ``transactional=True``), so
the oracle can check those effects exist exactly once per job.

Settings come from the environment, because the workers are separate processes:
``FAULT_DATABASE_URL`` (where the side tables live), ``FAULT_WORK_SECONDS`` (how long a handler
holds its job after recording it, so kills find jobs in flight) and ``FAULT_KEEP_SUCCEEDED``
(retention, for the soak run).
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
SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS fault_runs ("
    " job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (job_id, attempt, pid))",
    "CREATE TABLE IF NOT EXISTS fault_effects ("
    " job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL)",
)

# The switch for the exactly-once part: on when pgq_sa's Queue.task takes transactional=True.
TRANSACTIONAL = "transactional" in inspect.signature(Queue.task).parameters

queue = Queue(keep_succeeded=float(os.environ.get("FAULT_KEEP_SUCCEEDED", 86400)))
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


@queue.task(RECORD_TASKS[0])
def sync_job(job: Job) -> dict[str, int]:
    record(job)
    time.sleep(_work_seconds())
    return {"pid": os.getpid()}


@queue.task(RECORD_TASKS[1])
async def async_job(job: Job) -> dict[str, int]:
    await anyio.to_thread.run_sync(record, job)
    await anyio.sleep(_work_seconds())
    return {"pid": os.getpid()}


if TRANSACTIONAL:
    _effect_insert = text("INSERT INTO fault_effects (job_id, attempt, pid) VALUES (:j, :a, :p)")

    def _effect_task(handler: Any) -> Any:
        return queue.task(EFFECT_TASK, transactional=True)(handler)  # type: ignore[call-arg]

    @_effect_task
    def effect_job(job: Any) -> dict[str, int]:
        record(job)
        time.sleep(_work_seconds())
        job.connection.execute(_effect_insert, {"j": job.id, "a": job.attempt, "p": os.getpid()})
        return {"pid": os.getpid()}
