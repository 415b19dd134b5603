"""The dashboard's statements read what an index bounds, on a history big enough for the planner
to tell: no sequential scan of ``jobs``, and the job pages stop after the page (EXPLAIN)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from pgq_sa import Queue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FILL = """
INSERT INTO pgq.jobs (queue, task, state, attempt, max_attempts, run_at, started_at, finished_at,
                      worker_id, error, dedupe_key)
SELECT 'q' || (i % 5), 't' || (i % 20),
       (CASE WHEN i % 500 = 0 THEN 'failed' ELSE 'succeeded' END)::pgq.job_state, 1, 20,
       at, at, at + interval '5 ms', gen_random_uuid(),
       CASE WHEN i % 500 = 0 THEN '{"type": "E", "message": "m"}'::jsonb END,
       CASE WHEN i % 100 = 7 THEN 'k' || i END
  FROM generate_series(1, 300000) AS i,
       LATERAL (SELECT now() - interval '24 hours' + i * interval '288 ms' AS at) AS t
"""


def _nodes(plan):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _explain(connection, statement, params):
    compiled = statement.compile(dialect=connection.dialect)
    cursor = connection.connection.driver_connection.cursor()
    cursor.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, compiled.construct_params(params)
    )
    (row,) = cursor.fetchall()
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return list(_nodes(document[0]["Plan"]))


def test_no_dashboard_statement_scans_the_history(engine):
    queue = Queue()
    queue.enqueue(engine, "t1")
    with engine.begin() as connection:
        connection.execute(text(FILL))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE pgq.jobs")
    d = queue.statements.dashboard
    top = 2**63 - 1
    page = {"before": top, "limit": 51, "task": "t3", "queue": "q3"}
    cases = {
        "change_marker": (d.change_marker, {}),
        "throughput": (d.throughput, {"window": 3600.0}),
        "task_runtimes": (d.task_runtimes, {"window": 3600.0, "sample": 5000}),
        "job_page": (d.job_page[(None, False, False)], page),
        "job_page failed": (d.job_page[("failed", True, True)], page),
        "job_page windowed": (d.job_page_windowed[(None, True, True)], {**page, "floor": 200000}),
        "dedupe": (d.jobs_by_dedupe_key, {"key": "k7", "floor": 200000, "limit": 50}),
        "job_detail": (d.job_detail, {"job_id": 150000}),
        "failure_groups": (d.failure_groups, {"sample": 10000}),
        "failure_group_ids": (
            d.failure_group_ids,
            {"queue": "q0", "task": "t0", "error_type": "E", "limit": 1000},
        ),
        "workflow_steps": (d.workflow_steps, {"workflow_id": 1, "limit": 2000}),
        "workflow_edges": (d.workflow_edges, {"workflow_id": 1, "limit": 10000}),
    }
    with engine.connect() as connection:
        for label, (statement, params) in cases.items():
            nodes = _explain(connection, statement, params)
            scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
            assert scans, label
            assert not [n for n in scans if n["Node Type"] == "Seq Scan"], label
            if label.startswith("job_page"):
                assert max(n["Actual Rows"] for n in scans) <= 51, label
