"""Plans and timings of the monitoring statements on a large finished history.

    python -m benchmarks.monitoring_plans postgresql://postgres@127.0.0.1:5432/postgres [--rows N]

Creates a scratch database on that server (dropped at the end), fills it with N finished jobs
(0.2 % failed) spread over the past days, 60,000 finished in the last minute and 20,000 queued,
then prints each statement's scan nodes and execution time (EXPLAIN ANALYZE) and the time of a
whole ``monitoring.status()``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import time
import uuid

from sqlalchemy import create_engine, text

from pgq_sa import Queue
from pgq_sa import _monitoring as monitoring
from pgq_sa._config import make_engine, sync_url
from pgq_sa._ops.drive import run_sync
from pgq_sa.migrations import db_upgrade

FILL = """
INSERT INTO pgq.jobs (queue, task, state, attempt, run_at, created_at, started_at, finished_at,
                      worker_id)
SELECT 'q' || (i % 5), 't' || (i % 20),
       (CASE WHEN i % 500 = 0 THEN 'failed' ELSE 'succeeded' END)::pgq.job_state, 1,
       now() - :span * interval '1 second' + i * (:span / :rows) * interval '1 second'
             - interval '60 seconds',
       now() - :span * interval '1 second' + i * (:span / :rows) * interval '1 second'
             - interval '60 seconds',
       now() - :span * interval '1 second' + i * (:span / :rows) * interval '1 second'
             - interval '60 seconds' + interval '10 ms',
       now() - :span * interval '1 second' + i * (:span / :rows) * interval '1 second'
             - interval '60 seconds' + interval '50 ms',
       gen_random_uuid()
  FROM generate_series(1, :rows) AS i
"""
RECENT = """
INSERT INTO pgq.jobs (queue, task, state, attempt, run_at, created_at, started_at, finished_at,
                      worker_id)
SELECT 'q' || (i % 5), 't' || (i % 20), 'succeeded', 1, now() - i * interval '1 ms',
       now() - i * interval '1 ms', now() - i * interval '1 ms' + interval '5 ms',
       now() - i * interval '1 ms' + interval '6 ms', gen_random_uuid()
  FROM generate_series(1, 60000) AS i
"""
QUEUED = """
INSERT INTO pgq.jobs (queue, task, run_at)
SELECT 'q' || (i % 5), 't' || (i % 20), now() + (i % 3 - 1) * interval '1 hour'
  FROM generate_series(1, 20000) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server_url")
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    server = sync_url(args.server_url)
    name = f"pgq_sa_monitoring_plans_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(server.set(database=name))
    try:
        db_upgrade(engine)
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.execute(text(FILL), {"rows": args.rows, "span": 2 * 86_400.0})
            connection.execute(text(QUEUED))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE pgq.jobs")
        with engine.begin() as connection:
            connection.execute(text(RECENT))
        print(f"filled in {time.perf_counter() - started:.0f} s")
        _explain(engine)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _explain(engine) -> None:
    queue = Queue()
    m = queue.statements.monitoring
    cases = [
        ("task_backlog", m.task_backlog, {}),
        ("recent_finished", m.recent_finished, {"window": 60.0, "short_window": 10.0}),
        ("unsuccessful_counts", m.unsuccessful_counts, {}),
        ("start_latency", m.start_latency, {"window": 60.0, "sample": 1000}),
        ("list_workers", m.list_workers, {}),
        ("list_queues", queue.statements.list_queues, {}),
    ]
    everything = {"task": None, "queue": None, "limit": 50}
    for status in (None, "queued", "failed", "cancelled"):
        cases.append((f"list_jobs[{status}]", m.list_jobs[status], everything))
    with engine.connect() as connection:
        for label, statement, params in cases:
            compiled = statement.compile(dialect=engine.dialect)
            bound = {**compiled.params, **params}
            plan = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, COSTS OFF) " + str(compiled), bound
            ).scalars()
            lines = [line.strip() for line in plan if "Scan" in line or "Execution" in line]
            print(f"{label}: " + " | ".join(lines))
    for _ in range(5):
        started = time.perf_counter()
        run_sync(engine, monitoring.status(queue.statements))
        print(f"monitoring.status(): {(time.perf_counter() - started) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
