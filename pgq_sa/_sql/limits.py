"""Cluster-wide concurrency and rate limits: their rows, their lock, the limited claim."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Text,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables
from pgq_sa._sql.claim import claimable, claimer, dead_claimer_row, lease, order
from pgq_sa._sql.claim import parameters as claim_parameters
from pgq_sa._sql.shared import CLAIMED_COLUMNS, JsonColumn, claimed_types, json_rows

LIMIT_INPUT: tuple[JsonColumn, ...] = (
    ("tasks", "task", "text"),
    ("concurrency", "concurrency", "text"),
    ("rate_count", "rate_count", "text"),
    ("rate_period", "rate_period", "text"),
)


def upsert_limits(tables: QueueTables) -> Executable:
    """Record the concurrency and rate limits the worker's code declares (code is the source)."""
    s = tables.schema
    return text(
        f"""
INSERT INTO "{s}".task_limits AS l (task, concurrency, rate_count, rate_period, updated_at)
SELECT t.task, t.concurrency::integer, t.rate_count::integer, t.rate_period::double precision,
       now()
  FROM {json_rows(LIMIT_INPUT)}
ON CONFLICT (task) DO UPDATE
   SET concurrency = excluded.concurrency, rate_count = excluded.rate_count,
       rate_period = excluded.rate_period, updated_at = now()
"""
    ).bindparams(*(bindparam(parameter, type_=Text) for parameter, _, _ in LIMIT_INPUT))


def lock_limits(tables: QueueTables) -> Executable:
    """Serialise claims of limited tasks: the rows stay locked until the claim commits."""
    limits = tables.task_limits
    return (
        select(limits.c.task)
        .where(limits.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))))
        .order_by(limits.c.task)
        .with_for_update()
    )


def claim_limited(tables: QueueTables, *, in_queues: bool) -> Executable:
    """Claim jobs of tasks with a cluster-wide concurrency and/or rate limit.

    Runs in the transaction that locked the tasks' limit rows (``lock_limits``), so this
    statement's snapshot already includes every claim that committed before: running jobs are
    counted exactly, and no two claimers can both take the last slot. The rate limit is a
    generic cell rate algorithm: ``window_start`` holds the theoretical arrival time, each start
    advances it by ``rate_period / rate_count``, with a burst of a tenth of the rate.
    """
    s = tables.schema
    return (
        text(
            f"""
WITH {claimer(s)},
limits AS (
    SELECT l.task,
           l.rate_period / l.rate_count AS spacing,
           greatest(l.rate_count / 10, 1) AS burst,
           l.rate_count IS NOT NULL AS rated,
           greatest(0, least(
               :limit,
               coalesce(l.concurrency - (SELECT count(*) FROM "{s}".jobs AS r
                                          WHERE r.task = l.task AND r.state = 'running'),
                        :limit),
               coalesce(floor(extract(epoch FROM now() - greatest(coalesce(l.window_start, now()),
                                                              now()))
                              / (l.rate_period / l.rate_count)
                              + greatest(l.rate_count / 10, 1))::integer,
                        :limit))) AS allowed
      FROM "{s}".task_limits AS l
     WHERE l.task = any(:tasks)
),
picked AS (
    SELECT c.id
      FROM limits AS a
      CROSS JOIN LATERAL (
          SELECT j.id, j.priority, j.run_at
            FROM "{s}".jobs AS j
           WHERE {claimable(s, "j", in_queues=in_queues, task="a.task")}
           ORDER BY {order("j")}
           LIMIT a.allowed
             FOR UPDATE OF j SKIP LOCKED
      ) AS c
     ORDER BY {order("c")}
     LIMIT :limit
),
claimed AS (
    {lease(s, "picked")}
),
paced AS (
    UPDATE "{s}".task_limits AS l
       SET window_start = greatest(coalesce(l.window_start, now()), now())
                          + n.started * (l.rate_period / l.rate_count) * interval '1 second'
      FROM (SELECT task, count(*) AS started FROM claimed GROUP BY task) AS n
     WHERE l.task = n.task AND l.rate_count IS NOT NULL
    RETURNING l.task
)
SELECT claimed.*, (SELECT count(*) FROM paced) AS paced FROM claimed
UNION ALL
{dead_claimer_row(len(CLAIMED_COLUMNS) + 1)}
"""
        )
        .bindparams(*claim_parameters(tables, in_queues=in_queues))
        .columns(
            *claimed_types(tables),
        )
    )


# --- periodic schedules ------------------------------------------------------------------------
