"""The claim reads its partial index in order and stops early, even on a million-row table (alone
and inside ``finish_and_claim``); writes without the lease change nothing, in either statement."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from helpers import register
from sqlalchemy import text

from pgq_sa import Queue
from pgq_sa._decisions import Outcome, succeeded
from pgq_sa._ops import worker as protocol
from pgq_sa._worker.lanes import CLAIM_SESSION, SyncDatabase

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


FINISH_COLUMNS = ("ids", "attempts", "outcomes", "delays", "results", "errors")
NO_OUTCOMES = dict.fromkeys(FINISH_COLUMNS, "[]")


def _plan(connection, queue: Queue, statement: str) -> dict:
    for name, value in CLAIM_SESSION:
        connection.exec_driver_sql(f"SET {name} = {value}")
    compiled = getattr(queue.statements, statement).compile(dialect=connection.dialect)
    values = {"tasks": ["t"], "limit": 10, "worker_id": uuid.uuid4()}
    if statement.startswith("finish_and_claim"):
        values.update(NO_OUTCOMES)
    params = compiled.construct_params(values)
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
    if analyzed:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE pgq.jobs")
    for statement in ("claim", "finish_and_claim", "finish_and_claim_plain"):
        with engine.begin() as connection:
            explained = _plan(connection, queue, statement)
            connection.rollback()
        nodes = list(_nodes(explained["Plan"]))
        scans = [n for n in nodes if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]]
        claim_scan = next(n for n in scans if n.get("Index Name") == "jobs_claim_idx")
        assert claim_scan["Node Type"] == "Index Scan", statement
        assert claim_scan["Actual Rows"] <= 20, statement  # stopped after the limit, in order
        # No sort of jobs rows (a sort over the few workflow dependents a finish settles is
        # fine, and the planner may add one for json_agg(DISTINCT ...)).
        sorted_jobs = [
            n
            for n in nodes
            if n["Node Type"] == "Sort" and any(m.get("Relation Name") == "jobs" for m in _nodes(n))
        ]
        assert not sorted_jobs, statement


PLAIN = pytest.mark.parametrize("plain", [False, True], ids=["full", "plain"])


@PLAIN
def test_a_write_without_the_lease_changes_nothing_and_is_logged(engine, caplog, plain):
    queue = Queue()
    job_id = queue.enqueue(engine, "t")
    database = SyncDatabase(engine)
    holder = register(engine, queue, protocol.Identity.new("test"))
    (claimed,) = database.run(protocol.claim(queue.statements, holder.id, ["t"], None, 1)).jobs
    before = queue.get(engine, job_id)
    stranger = uuid.uuid4()
    outcome = succeeded(job_id, claimed.job.attempt, "late")
    with caplog.at_level(logging.WARNING, logger="pgq_sa.worker"):
        result = database.run(protocol.finish(queue.statements, stranger, [outcome], plain=plain))
        stale_outcome = succeeded(job_id, 99, "stale")
        stale = database.run(
            protocol.finish(queue.statements, holder.id, [stale_outcome], plain=plain)
        )
    assert result.lost == (outcome,)
    assert stale.recorded == {}
    assert queue.get(engine, job_id) == before
    assert "lease lost" in caplog.text
    done = database.run(protocol.finish(queue.statements, holder.id, [outcome], plain=plain))
    assert done.recorded == {job_id: "succeeded"}


@PLAIN
def test_finish_and_claim_writes_only_under_the_lease_and_claims_in_the_same_statement(
    engine, caplog, plain
):
    queue = Queue()
    first, second, third = (queue.enqueue(engine, "t", {"n": n}) for n in range(3))
    database = SyncDatabase(engine)
    holder = register(engine, queue, protocol.Identity.new("test"))
    (claimed,) = database.run(protocol.claim(queue.statements, holder.id, ["t"], None, 1)).jobs
    assert claimed.job.id == first
    outcome = succeeded(first, claimed.job.attempt, "done")
    stranger = register(engine, queue, protocol.Identity.new("other")).id  # another live worker
    with caplog.at_level(logging.WARNING, logger="pgq_sa.worker"):
        finished, taken = database.run(
            protocol.finish_and_claim(
                queue.statements, stranger, [outcome], ["t"], None, 1, plain=plain
            )
        )
    assert finished.lost == (outcome,)
    assert finished.recorded == {}
    assert "lease lost" in caplog.text
    assert [c.job.id for c in taken.jobs] == [second]  # the claim part ran all the same
    assert queue.get(engine, first).status == "running"
    retry = Outcome(first, claimed.job.attempt, "queued", delay=0.0)
    finished, taken = database.run(
        protocol.finish_and_claim(queue.statements, holder.id, [retry], ["t"], None, 5, plain=plain)
    )
    assert finished.recorded == {first: "queued"}
    assert finished.next_run_at is not None
    # Same snapshot: the job queued again by this statement is not claimed by it.
    assert [c.job.id for c in taken.jobs] == [third]
    assert taken.jobs[0].job.payload == {"n": 2}
    assert taken.jobs[0].job.attempt == 1
    info = queue.get(engine, first)
    assert info.status == "queued"
    assert info.attempts == 1
