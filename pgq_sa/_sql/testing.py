"""Statements only ``pgq_sa.testing`` runs."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Text,
    bindparam,
    func,
    update,
)
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables
from pgq_sa._sql.shared import in_states


def make_due(tables: QueueTables) -> Executable:
    """Make the queued jobs of ``tasks`` due now, delayed ones and pending retries included.
    Used only by :func:`pgq_sa.testing.run_due_jobs` with ``include_delayed=True``."""
    jobs = tables.jobs
    return (
        update(jobs)
        .where(
            in_states(jobs.c.state, "queued"),
            jobs.c.run_at > func.now(),
            jobs.c.task == func.any(bindparam("tasks", type_=ARRAY(Text))),
        )
        .values(run_at=func.now())
        .returning(jobs.c.id)
    )
