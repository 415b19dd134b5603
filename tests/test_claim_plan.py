"""The claim reads its partial index in order and stops early, even on a million-row table."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from sqlalchemy import text

from pgq_sa import Queue
from pgq_sa.decisions import succeeded
from pgq_sa.workers import protocol
from pgq_sa.workers.database import CLAIM_SESSION, SyncDatabase

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _plan(connection, queue: Queue, analyzed: bool) -> dict:
    if analyzed:
        connection.exec_driver_sql("ANALYZE pgq.jobs")
    for name, value in CLAIM_SESSION:
        connection.exec_driver_sql(f"SET {name} = {value}")
    compiled = queue.statements.claim.compile(dialect=connection.dialect)
    params = compiled.construct_params({"tasks": ["t"], "limit": 10, "worker_id": uuid.uuid4()})
    cursor = connection.connection.driver_connection.cursor()
    cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, params)
    (row,) = cursor.fetchall()
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return document[0]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh-stats", "analyzed"])
def test_claim_uses_the_partial_index_on_a_million_rows(engine, analyzed):
    queue = Queue()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pgq.jobs (task, payload, state, attempt, finished_at, worker_id) "
                "SELECT 't', jsonb_build_object('n', g), "
                "CASE WHEN g % 2 = 0 THEN 'succeeded'::pgq.job_state ELSE 'queued' END, "
                "CASE WHEN g % 2 = 0 THEN 1 ELSE 0 END, "
                "CASE WHEN g % 2 = 0 THEN now() END, "
                "CASE WHEN g % 2 = 0 THEN gen_random_uuid() END "
                "FROM generate_series(1, 1000000) g"
            )
        )
    with engine.begin() as connection:
        explained = _plan(connection, queue, analyzed)
        connection.rollback()
    nodes = list(_nodes(explained["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]]
    claim_scan = next(n for n in scans if n.get("Index Name") == "jobs_claim_idx")
    assert claim_scan["Node Type"] == "Index Scan"
    assert claim_scan["Actual Rows"] <= 20  # stopped after the limit, in index order
    assert not [n for n in nodes if n["Node Type"] == "Sort"]


def test_a_write_without_the_lease_changes_nothing_and_is_logged(engine, caplog):
    queue = Queue()
    job_id = queue.enqueue(engine, "t")
    database = SyncDatabase(engine)
    holder = protocol.Identity.new("test")
    (claimed,) = database.run(protocol.claim(queue.statements, holder.id, ["t"], None, 1))
    before = queue.get(engine, job_id)
    stranger = uuid.uuid4()
    outcome = succeeded(job_id, claimed.job.attempt, "late")
    with caplog.at_level(logging.WARNING, logger="pgq_sa.worker"):
        result = database.run(protocol.finish(queue.statements, stranger, [outcome]))
        stale = database.run(
            protocol.finish(queue.statements, holder.id, [succeeded(job_id, 99, "stale")])
        )
    assert result.lost == (outcome,)
    assert stale.recorded == {}
    assert queue.get(engine, job_id) == before
    assert "lease lost" in caplog.text
    done = database.run(protocol.finish(queue.statements, holder.id, [outcome]))
    assert done.recorded == {job_id: "succeeded"}
