"""Tasks with cluster-wide limits, run by several `pgq-sa run` processes in the limits tests.

Each handler records itself in tables of the test database (through DATABASE_URL), so the test
sees every start from every process: ``gauge`` for concurrency, ``starts`` for the rate.
"""

from __future__ import annotations

import os
import time

import psycopg

from pgq_sa import Queue

queue = Queue()
LIMIT = 3


def _execute(sql: str) -> None:
    with psycopg.connect(os.environ["LIMITS_TEST_DSN"], autocommit=True) as connection:
        connection.execute(sql)


@queue.task("limited.work", concurrency=LIMIT)
def limited_work(job):
    _execute("UPDATE gauge SET current = current + 1, peak = greatest(peak, current + 1)")
    try:
        time.sleep(0.15)
    finally:
        _execute("UPDATE gauge SET current = current - 1")


@queue.task("paced.work", rate_limit="20/s")
def paced_work(job):
    _execute("INSERT INTO starts VALUES (clock_timestamp())")
