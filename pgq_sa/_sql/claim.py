"""The claim rule, written once: which jobs a worker may lease, in which order, and how.

Three statements lease jobs: the plain claim, ``finish_and_claim`` (outcomes written in the same
statement) and the limited claim (per task, under its limit rows). They share the text below: the
conditions of a claimable job, its order (that of the partial claim index, so a claim walks the
index and stops after ``limit`` rows), and the UPDATE that takes the lease. Rows are reached
through ``id = any(ARRAY(...))`` so that the generic plan the workers' lanes use is a primary-key
lookup whatever the statistics.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ARRAY, Integer, Text, bindparam, func, select, text
from sqlalchemy.sql.expression import BindParameter, Executable

from pgq_sa._schema import QueueTables
from pgq_sa._sql.shared import CLAIMED_COLUMNS, claimed_sql, claimed_types, in_states

CLAIM_ORDER = "{a}.priority DESC, {a}.run_at, {a}.id"


def claimer(s: str) -> str:
    """The CTE ``me``: the claimer's own row, while its lease (its own) lives.

    Every claim requires it (``claimable``), so a worker that was declared dead claims nothing
    until it has registered again. The row is locked FOR KEY SHARE until the claim commits: a
    rescue that already decided the worker is dead holds the row FOR UPDATE, so the claim waits
    for it and then finds the row gone; a rescue that comes second skips the row (SKIP LOCKED)
    while the claim is in flight. Either way no job is claimed by a worker being rescued. (KEY
    SHARE does not conflict with the worker's own heartbeat UPDATE.)"""
    return f"""me AS (
    SELECT w.id FROM "{s}".workers AS w
     WHERE w.id = :worker_id
       AND w.heartbeat_at > now() - w.lease_timeout * interval '1 second'
       FOR KEY SHARE
)"""


def dead_claimer_row(columns: int) -> str:
    """A row of NULLs (``columns`` of them) that only a claimer without a live row gets: how a
    claim says "register again" when it leases nothing."""
    return f"SELECT {', '.join(['NULL'] * columns)} WHERE NOT EXISTS (SELECT 1 FROM me)"


def claimable(s: str, a: str, *, in_queues: bool, task: str = "any(:tasks)") -> str:
    """SQL conditions on the jobs row ``a`` of schema ``s``: queued, due, of one of the claimer's
    tasks (``task``: the right-hand side of ``a.task =``), in a queue that is not paused, and, when
    ``in_queues``, in one of the queues named by ``:queues``; and the claimer is alive (the CTE
    ``me`` of :func:`claimer`, which every claim statement defines)."""
    rule = (
        f"{a}.state = 'queued' AND {a}.run_at <= now() AND {a}.task = {task}\n"
        f'       AND {a}.queue NOT IN (SELECT q.name FROM "{s}".queues AS q WHERE q.paused)\n'
        "       AND EXISTS (SELECT 1 FROM me)"
    )
    if in_queues:
        rule += f"\n       AND {a}.queue = any(:queues)"
    return rule


def order(a: str) -> str:
    """The claim order of jobs row ``a``: highest priority, then earliest due, then oldest."""
    return CLAIM_ORDER.format(a=a)


def lease(s: str, picked: str) -> str:
    """The UPDATE leasing the rows whose ids the CTE ``picked`` selected, returning what a worker
    needs of each (``CLAIMED_COLUMNS``)."""
    return f"""UPDATE "{s}".jobs AS c
       SET state = 'running', attempt = c.attempt + 1, started_at = now(),
           worker_id = :worker_id
     WHERE c.id = any(ARRAY(SELECT {picked}.id FROM {picked}))
    RETURNING {claimed_sql("c")}"""


def parameters(tables: QueueTables, *, in_queues: bool) -> list[BindParameter[Any]]:
    """The bind parameters of a claim: the claimer, its tasks, how many, and its queues."""
    found: list[BindParameter[Any]] = [
        bindparam("worker_id", type_=tables.jobs.c.worker_id.type),
        bindparam("tasks", type_=ARRAY(Text)),
        bindparam("limit", type_=Integer),
    ]
    if in_queues:
        found.append(bindparam("queues", type_=ARRAY(Text)))
    return found


def claim(tables: QueueTables, *, in_queues: bool) -> Executable:
    """Lease up to ``limit`` claimable jobs, skipping rows other claimers hold; a claimer whose
    row is not alive gets one row of NULLs instead."""
    s = tables.schema
    return (
        text(
            f"""
WITH {claimer(s)},
picked AS (
    SELECT j.id
      FROM "{s}".jobs AS j
     WHERE {claimable(s, "j", in_queues=in_queues)}
     ORDER BY {order("j")}
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    {lease(s, "picked")}
)
SELECT * FROM claimed
UNION ALL
{dead_claimer_row(len(CLAIMED_COLUMNS))}
"""
        )
        .bindparams(*parameters(tables, in_queues=in_queues))
        .columns(*claimed_types(tables))
    )


def next_run_at(tables: QueueTables) -> Executable:
    """When the earliest queued job of these tasks becomes due. Read only when a worker starts or
    its listener reconnects, i.e. when a NOTIFY about a delayed job may have been missed."""
    jobs = tables.jobs
    return select(func.min(jobs.c.run_at).label("run_at")).where(
        in_states(jobs.c.state, "queued"),
        jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
    )
