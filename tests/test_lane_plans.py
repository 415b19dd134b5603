"""The lanes' generic plans stay on the indexes, however the table changed since they were made.

Each hot statement is prepared under its lane's session settings while ``jobs`` holds a handful of
rows (so the planner would happily scan it), run once so the generic plan is made and cached,
then the table grows a hundredfold without ANALYZE. ``EXPLAIN EXECUTE`` must still show index
access only: no sequential scan of ``jobs``, no sort of it, and no JIT.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from pgq_sa import JobSpec, Queue
from pgq_sa._worker.driver_path import CompiledStatement
from pgq_sa._worker.lanes import CLAIM_SESSION, FINISH_SESSION, Settings

CASES = [
    ("claim", CLAIM_SESSION),
    ("finish_and_claim", CLAIM_SESSION),
    ("finish", FINISH_SESSION),
]


def _arguments(compiled: CompiledStatement, ids: list[int], worker_id: uuid.UUID) -> list[object]:
    count = len(ids)
    return compiled.arguments(
        {
            "worker_id": worker_id,
            "tasks": ["t"],
            "limit": 10,
            "ids": json.dumps(ids),
            "attempts": json.dumps([1] * count),
            "outcomes": json.dumps(["succeeded"] * count),
            "delays": json.dumps([None] * count),
            "results": json.dumps([None] * count),
            "errors": json.dumps([None] * count),
        }
    )


@pytest.mark.parametrize(("name", "session"), CASES, ids=[name for name, _ in CASES])
def test_a_generic_plan_made_on_a_small_table_keeps_to_the_indexes(
    name: str, session: Settings, engine, database_url
) -> None:
    queue = Queue()
    queue.enqueue_many(engine, [JobSpec("t") for _ in range(20)])
    dialect = create_async_engine(database_url.set(drivername="postgresql+asyncpg")).dialect
    compiled = CompiledStatement.compile(getattr(queue.statements, name), dialect)
    arguments = _arguments(compiled, list(range(1, 11)), uuid.uuid4())
    types = _types(len(arguments), compiled)
    placeholders = ", ".join(f"%s::{t}" for t in types)
    conninfo = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        for setting, value in session:
            connection.execute(f"SET {setting} = {value}")
        connection.execute(f"PREPARE hot ({', '.join(types)}) AS {compiled.sql}")
        cursor = psycopg.ClientCursor(connection)  # EXECUTE takes no protocol-level parameters
        with connection.transaction(force_rollback=True):
            cursor.execute(f"EXECUTE hot({placeholders})", arguments)
        queue.enqueue_many(engine, [JobSpec("t") for _ in range(2_000)])  # no ANALYZE
        with connection.transaction(force_rollback=True):
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE hot({placeholders})", arguments)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan on jobs" not in plan, plan
    assert "Bitmap" not in plan, plan
    assert "JIT" not in plan, plan
    if name != "finish":
        assert "jobs_claim_idx" in plan, plan


def _types(count: int, compiled: CompiledStatement) -> list[str]:
    """The SQL type of each positional parameter, for EXECUTE's arguments."""
    names = {
        "worker_id": "uuid",
        "tasks": "text[]",
        "limit": "integer",
        "attempt_1": "integer",
        "state": "pgq.job_state",
    }
    types = [names.get(name, "text") for name, _ in compiled.binds]
    assert len(types) == count
    return types
