"""``web_pages``: the dashboard's server time per page on a large history.

A schema of its own gets ``finished`` finished jobs (one ``INSERT ... SELECT generate_series``:
spread evenly over the last 24 hours, 20 tasks in 5 queues, 0.2 % failed with one of three error
types, 0.1 % cancelled, every 100th with a dedupe key), ``queued`` queued jobs (half due, half
later), 50 running ones, 8 workers, 4 schedules and ``workflows`` workflows of 5 steps; then
VACUUM ANALYZE, as autovacuum would leave it. Each page is requested in-process through the ASGI
app (Starlette's TestClient: no network, the app's whole work: parsing, the statements in a
worker thread, rendering) ``repeat`` times after ``warmup`` untimed requests; the table gives
the median and p95 in milliseconds, plus the live watcher's fingerprint query. ``--explain``
also prints each dashboard statement's scans and execution time (EXPLAIN ANALYZE).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, text

from benchmarks.context import Context
from benchmarks.scratch_databases import execute
from benchmarks.stats import median, percentile
from pgq_sa import Queue
from pgq_sa import _dashboard as dashboard
from pgq_sa._ops.drive import run_sync

SCHEMA = "bench_web"
TARGET_MS = 100.0

FINISHED = """
INSERT INTO {s}.jobs (queue, task, payload, state, attempt, max_attempts, run_at, created_at,
                      started_at, finished_at, worker_id, error, result, dedupe_key)
SELECT 'q' || (i % 5), 't' || (i % 20), jsonb_build_object('order', i),
       (CASE WHEN i % 500 = 0 THEN 'failed' WHEN i % 1000 = 1 THEN 'cancelled'
             ELSE 'succeeded' END)::{s}.job_state,
       1, CASE WHEN i % 500 = 0 THEN 1 ELSE 20 END,
       at - interval '80 ms', at - interval '80 ms', at - interval '50 ms', at,
       ('00000000-0000-0000-0000-00000000000' || (i % 8))::uuid,
       CASE WHEN i % 500 = 0 THEN jsonb_build_object(
           'type', (ARRAY['ConnectionError', 'TimeoutError', 'ValueError'])[1 + i % 3],
           'message', 'attempt failed for order ' || i,
           'traceback', 'Traceback (most recent call last): ...', 'attempt', 1) END,
       CASE WHEN i % 500 > 1 THEN '{{"ok": true}}'::jsonb END,
       CASE WHEN i % 100 = 7 THEN 'order:' || i END
  FROM generate_series(1, :rows) AS i,
       LATERAL (SELECT now() - interval '24 hours' + i * (86400.0 / :rows) * interval '1 second'
                AS at) AS t
"""
QUEUED = """
INSERT INTO {s}.jobs (queue, task, payload, run_at, dedupe_key)
SELECT 'q' || (i % 5), 't' || (i % 20), jsonb_build_object('order', i),
       now() + (CASE WHEN i % 2 = 0 THEN -1 ELSE 1 END) * (i % 600) * interval '1 second',
       CASE WHEN i % 10 = 3 THEN 'live:' || i END
  FROM generate_series(1, :rows) AS i
"""
RUNNING = """
UPDATE {s}.jobs SET state = 'running', attempt = 1, started_at = now(),
       worker_id = ('00000000-0000-0000-0000-00000000000' || (id % 8))::uuid
 WHERE id IN (SELECT id FROM {s}.jobs WHERE state = 'queued' ORDER BY id LIMIT 50)
"""
WORKERS = """
INSERT INTO {s}.workers (id, name, kind, hostname, pid, tasks, concurrency, heartbeat_at)
SELECT ('00000000-0000-0000-0000-00000000000' || i)::uuid, 'worker-' || i, 'thread', 'host',
       1000 + i, ARRAY(SELECT 't' || n FROM generate_series(0, 19) AS n), 16,
       now() - (CASE WHEN i = 7 THEN 600 ELSE 1 END) * interval '1 second'
  FROM generate_series(0, 7) AS i
"""
SCHEDULES = """
INSERT INTO {s}.schedules (name, task, expression, next_fire_at, last_fire_at)
SELECT 'report.' || i, 'report.' || i, '*/5 * * * *', now() + interval '3 minutes',
       now() - interval '2 minutes'
  FROM generate_series(1, 4) AS i
"""
WORKFLOWS = """
WITH flows AS (
    INSERT INTO {s}.workflows (name) SELECT 'flow.' || i FROM generate_series(1, :flows) AS i
    RETURNING id
), steps AS (
    INSERT INTO {s}.jobs (task, state, workflow_id, waiting_for, attempt, started_at,
                          finished_at, worker_id)
    SELECT 'step.' || n, (CASE WHEN n < 3 THEN 'succeeded' ELSE 'waiting' END)::{s}.job_state,
           f.id, CASE WHEN n < 3 THEN 0 ELSE 1 END, CASE WHEN n < 3 THEN 1 ELSE 0 END,
           CASE WHEN n < 3 THEN now() END, CASE WHEN n < 3 THEN now() END,
           CASE WHEN n < 3 THEN '00000000-0000-0000-0000-000000000001'::uuid END
      FROM flows AS f, generate_series(1, 5) AS n
    RETURNING id, workflow_id, task
)
INSERT INTO {s}.job_dependencies (depends_on, job_id)
SELECT up.id, down.id FROM steps AS up JOIN steps AS down
    ON up.workflow_id = down.workflow_id AND down.task = 'step.' || (substr(up.task, 6)::int + 1)
"""


def fill(context: Context, finished: int, queued: int, workflows: int) -> None:
    engine = context.engine
    label = f"fill {finished:,} finished and {queued:,} queued jobs"
    with context.progress.step(label), engine.begin() as connection:
        connection.execute(text(FINISHED.format(s=SCHEMA)), {"rows": finished})
        connection.execute(text(QUEUED.format(s=SCHEMA)), {"rows": queued})
        connection.execute(text(RUNNING.format(s=SCHEMA)))
        connection.execute(text(WORKERS.format(s=SCHEMA)))
        connection.execute(text(SCHEDULES.format(s=SCHEMA)))
        connection.execute(text(WORKFLOWS.format(s=SCHEMA)), {"flows": workflows})
    with context.progress.step("VACUUM ANALYZE"):
        execute(engine, f"VACUUM ANALYZE {SCHEMA}.jobs")
        execute(engine, f"VACUUM ANALYZE {SCHEMA}.job_dependencies")
        execute(engine, f"VACUUM ANALYZE {SCHEMA}.workflows")


def _one(engine: Engine, sql: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql.format(s=SCHEMA))).scalar_one()


def pages(engine: Engine) -> Iterator[tuple[str, str, dict[str, str] | None]]:
    """(label, path, form) of every page measured; a form makes it a POST."""
    newest = _one(engine, "SELECT max(id) FROM {s}.jobs")
    failed = _one(engine, "SELECT max(id) FROM {s}.jobs WHERE state = 'failed'")
    workflow = _one(engine, "SELECT max(id) FROM {s}.workflows")
    step = _one(engine, "SELECT max(id) FROM {s}.jobs WHERE workflow_id IS NOT NULL")
    yield "overview", "/", None
    yield "queues", "/queues", None
    yield "tasks", "/tasks", None
    yield "jobs (newest)", "/jobs", None
    yield "jobs (deep cursor)", f"/jobs?before={newest // 2}", None
    yield "jobs status=failed", "/jobs?status=failed", None
    yield "jobs status=queued", "/jobs?status=queued", None
    yield "jobs status=succeeded task=t3", "/jobs?status=succeeded&task=t3", None
    yield "jobs task=t3 queue=q3", "/jobs?task=t3&queue=q3", None
    yield "jobs failed task=t0 queue=q0", "/jobs?status=failed&task=t0&queue=q0", None
    yield "job detail (failed)", f"/jobs/{failed}", None
    yield "job detail (workflow step)", f"/jobs/{step}", None
    yield "dedupe key search (POST)", "/jobs/search", {"dedupe_key": "order:1999907"}
    yield "failures", "/failures", None
    yield "workers", "/workers", None
    yield "schedules", "/schedules", None
    yield "workflows", "/workflows", None
    yield "workflow graph", f"/workflows/{workflow}", None


def measure(context: Context, repeat: int, warmup: int) -> list[tuple[str, float, float]]:
    from starlette.testclient import TestClient

    from pgq_sa.web import create_app

    results: list[tuple[str, float, float]] = []
    app = create_app(context.engine, schema=SCHEMA, auth=None, live=False)
    with TestClient(app) as client:
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/jobs").text)
        assert token is not None
        for label, path, form in pages(context.engine):
            timings: list[float] = []
            for number in range(warmup + repeat):
                started = time.perf_counter()
                if form is None:
                    response = client.get(path)
                else:
                    response = client.post(
                        path,
                        data={"csrf": token.group(1), **form},
                        headers={"origin": "http://testserver"},
                    )
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status_code}")
                if number >= warmup:
                    timings.append(elapsed)
            results.append((label, median(timings), percentile(timings, 95)))
            context.progress.line(f"    {label}: {results[-1][1]:.1f} ms")
    queue = Queue(schema=SCHEMA)
    timings = []
    for number in range(warmup + repeat):
        started = time.perf_counter()
        run_sync(context.engine, dashboard.change_marker(queue.statements))
        if number >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    results.append(("live: change marker (every 2 s)", median(timings), percentile(timings, 95)))
    return results


def explain(context: Context) -> None:
    """Scan nodes and execution time of each dashboard statement on the filled table."""
    queue = Queue(schema=SCHEMA)
    d = queue.statements.dashboard
    newest = _one(context.engine, "SELECT max(id) FROM {s}.jobs")
    failed = _one(context.engine, "SELECT max(id) FROM {s}.jobs WHERE state = 'failed'")
    workflow = _one(context.engine, "SELECT max(id) FROM {s}.workflows")
    page = {"before": 2**63 - 1, "limit": 51, "task": "t3", "queue": "q3"}
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("change_marker", d.change_marker, {}),
        ("throughput", d.throughput, {"window": 3600.0}),
        ("task_runtimes", d.task_runtimes, {"window": 3600.0, "sample": 5000}),
        ("job_page[any]", d.job_page[(None, False, False)], page),
        ("job_page[failed, task, queue]", d.job_page[("failed", True, True)], page),
        ("job_page[queued]", d.job_page[("queued", False, False)], page),
        (
            "job_page_windowed[task, queue]",
            d.job_page_windowed[(None, True, True)],
            {**page, "floor": newest - 100_000},
        ),
        (
            "jobs_by_dedupe_key",
            d.jobs_by_dedupe_key,
            {"key": "order:7", "floor": newest - 100_000, "limit": 50},
        ),
        ("job_detail", d.job_detail, {"job_id": failed}),
        ("failure_groups", d.failure_groups, {"sample": 10_000}),
        (
            "failure_group_ids",
            d.failure_group_ids,
            {"queue": "q0", "task": "t0", "error_type": "TimeoutError", "limit": 1000},
        ),
        ("workflow_page", d.workflow_page, {"before": 2**63 - 1, "limit": 51}),
        ("workflow_steps", d.workflow_steps, {"workflow_id": workflow, "limit": 2000}),
        ("workflow_edges", d.workflow_edges, {"workflow_id": workflow, "limit": 10000}),
    ]
    with context.engine.connect() as connection:
        for label, statement, params in cases:
            compiled = statement.compile(dialect=context.engine.dialect)
            bound = {**compiled.params, **params}
            plan = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, COSTS OFF) " + str(compiled), bound
            ).scalars()
            lines = [line.strip() for line in plan if "Scan" in line or "Execution" in line]
            print(f"- {label}: " + " | ".join(lines))


def run(
    context: Context,
    *,
    finished: int,
    queued: int,
    workflows: int,
    repeat: int,
    warmup: int,
    show_plans: bool,
) -> None:
    with context.queue_schema(SCHEMA):
        fill(context, finished, queued, workflows)
        results = measure(context, repeat, warmup)
        print(f"\n## web_pages: {finished:,} finished + {queued:,} queued jobs\n")
        print(f"| page | median ms | p95 ms | under {TARGET_MS:.0f} ms |")
        print("|---|---:|---:|---|")
        for label, middle, high in results:
            verdict = "yes" if high < TARGET_MS else "NO"
            print(f"| {label} | {middle:.1f} | {high:.1f} | {verdict} |")
        if show_plans:
            print("\nPlans (EXPLAIN ANALYZE):\n")
            explain(context)
