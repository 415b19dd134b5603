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


# The claimer's own row, alive: its lease (its own) has not run out.
_ALIVE = (
    "{w}.id = :worker_id AND {w}.heartbeat_at > now() - {w}.lease_timeout * interval '1 second'"
)


def claimer(s: str, *, lazy: bool = False) -> str:
    """The CTE ``me``: the claimer's own row, while its lease (its own) lives.

    Every claim requires it, so a worker that was declared dead claims nothing until it has
    registered again. The row is locked FOR KEY SHARE until the claim commits: a rescue that
    already decided the worker is dead holds the row FOR UPDATE, so the claim waits for it and
    then finds the row gone; a rescue that comes second skips the row (SKIP LOCKED) while the
    claim is in flight. Either way no job is claimed by a worker being rescued. (KEY SHARE does
    not conflict with the worker's own heartbeat UPDATE.)

    ``lazy`` (the plain and the limited claim): the row is read and locked only once ``picked``
    found jobs, and ``me`` comes after ``picked``. A lock is a write: taken by every claim, it
    made each empty claim of an idle worker commit with a WAL flush (3.5 a second for an idle
    AsyncWorker of five fetchers, against 0.3 without). Such a claim holds no job row a rescue
    waits for (it locks queued rows only), so taking the worker's row last cannot deadlock.
    ``finish_and_claim`` stays eager: it writes anyway, and it locks workflow rows a rescue may
    wait for, so it takes the worker's row before them."""
    gate = "\n       AND EXISTS (SELECT 1 FROM picked)" if lazy else ""
    return f"""me AS (
    SELECT w.id FROM "{s}".workers AS w
     WHERE {_ALIVE.format(w="w")}{gate}
       FOR KEY SHARE
)"""


def claimer_alive(s: str, *, lazy: bool = False) -> str:
    """Is the claimer alive? Its locked row (``me``); for a ``lazy`` claim that picked nothing
    (so never read ``me``), a plain read of the row, which takes no lock."""
    if not lazy:
        return "EXISTS (SELECT 1 FROM me)"
    return (
        "(EXISTS (SELECT 1 FROM me) OR (NOT EXISTS (SELECT 1 FROM picked) AND EXISTS ("
        f'SELECT 1 FROM "{s}".workers AS alive WHERE {_ALIVE.format(w="alive")})))'
    )


def dead_claimer_row(s: str, columns: int, *, lazy: bool = False) -> str:
    """A row of NULLs (``columns`` of them) that only a claimer without a live row gets: how a
    claim says "register again" when it leases nothing."""
    nulls = ", ".join(["NULL"] * columns)
    return f"SELECT {nulls} WHERE NOT {claimer_alive(s, lazy=lazy)}"


def claimable(
    s: str, a: str, *, in_queues: bool, task: str = "any(:tasks)", lazy: bool = False
) -> str:
    """SQL conditions on the jobs row ``a`` of schema ``s``: queued, due, of one of the claimer's
    tasks (``task``: the right-hand side of ``a.task =``), in a queue that is not paused, and, when
    ``in_queues``, in one of the queues named by ``:queues``; and, unless ``lazy`` (then
    :func:`lease` checks it), the claimer is alive (the CTE ``me`` of :func:`claimer`, which every
    claim statement defines)."""
    rule = (
        f"{a}.state = 'queued' AND {a}.run_at <= now() AND {a}.task = {task}\n"
        f'       AND {a}.queue NOT IN (SELECT q.name FROM "{s}".queues AS q WHERE q.paused)'
    )
    if not lazy:
        rule += "\n       AND EXISTS (SELECT 1 FROM me)"
    if in_queues:
        rule += f"\n       AND {a}.queue = any(:queues)"
    return rule


def order(a: str) -> str:
    """The claim order of jobs row ``a``: highest priority, then earliest due, then oldest."""
    return CLAIM_ORDER.format(a=a)


def lease(s: str, picked: str, *, lazy: bool = False) -> str:
    """The UPDATE leasing the rows whose ids the CTE ``picked`` selected, returning what a worker
    needs of each (``CLAIMED_COLUMNS``); when ``lazy``, only if the claimer is alive (``me``)."""
    alive = " AND EXISTS (SELECT 1 FROM me)" if lazy else ""
    return f"""UPDATE "{s}".jobs AS c
       SET state = 'running', attempt = c.attempt + 1, started_at = now(),
           worker_id = :worker_id
     WHERE c.id = any(ARRAY(SELECT {picked}.id FROM {picked})){alive}
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
    row is not alive gets one row of NULLs instead. Its claimer check is lazy (see
    :func:`claimer`): a claim that finds nothing writes nothing."""
    s = tables.schema
    return (
        text(
            f"""
WITH picked AS (
    SELECT j.id
      FROM "{s}".jobs AS j
     WHERE {claimable(s, "j", in_queues=in_queues, lazy=True)}
     ORDER BY {order("j")}
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
),
{claimer(s, lazy=True)},
claimed AS (
    {lease(s, "picked", lazy=True)}
)
SELECT * FROM claimed
UNION ALL
{dead_claimer_row(s, len(CLAIMED_COLUMNS), lazy=True)}
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
