"""The claim: leasing due, queued jobs to a worker (and when the next one is due)."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Integer,
    Text,
    any_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables
from pgq_sa._sql.shared import CLAIMED_COLUMNS, in_states


def claim(tables: QueueTables, *, in_queues: bool) -> Executable:
    """Lease up to ``limit`` due, queued jobs of the worker's tasks (and queues), highest priority
    first, skipping rows other claimers hold and queues that are paused."""
    jobs, queues = tables.jobs, tables.queues
    conditions = [
        in_states(jobs.c.state, "queued"),
        jobs.c.run_at <= func.now(),
        jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
        jobs.c.queue.not_in(select(queues.c.name).where(queues.c.paused)),
    ]
    if in_queues:
        conditions.append(jobs.c.queue == func.any(bindparam("queues", type_=ARRAY(Text))))
    picked = (
        select(jobs.c.id)
        .where(*conditions)
        .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    return (
        update(jobs)
        .where(jobs.c.id == any_(func.array(select(picked.c.id).scalar_subquery())))
        .values(
            state="running",
            attempt=jobs.c.attempt + 1,
            worker_id=bindparam("worker_id", type_=jobs.c.worker_id.type),
            started_at=func.now(),
        )
        .returning(*(jobs.c[name] for name in CLAIMED_COLUMNS))
    )


# The outcomes of many attempts, one JSON array per column (see ``decisions.finish_parameters``),
# written under their leases; ``notified`` announces the finished ids that someone waits for
# (``awaited``, set by ``mark_awaited``): a NOTIFY serialises the commits of every transaction
# that sends one, so finishes nobody waits for send none. Rows are reached through
# ``id = any(ARRAY(...))`` so that the generic plan the workers' lanes use is an index lookup
# whatever the statistics. Shared by ``finish`` and ``finish_and_claim``, which must reference


def next_run_at(tables: QueueTables) -> Executable:
    """When the earliest queued job of these tasks becomes due. Read only when a worker starts or
    its listener reconnects, i.e. when a NOTIFY about a delayed job may have been missed."""
    jobs = tables.jobs
    return select(func.min(jobs.c.run_at).label("run_at")).where(
        in_states(jobs.c.state, "queued"),
        jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
    )
