"""What ``pgq-sa demo`` reads to sum its run up, and how it starts from a clean schema."""

from __future__ import annotations

from sqlalchemy import Integer, Text, distinct, func, select, text
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables, validate_schema_name
from pgq_sa._sql.shared import in_states


def drop_schema(schema: str) -> Executable:
    """Drop the demo's own schema, whatever it holds (the demo recreates it)."""
    return text(f'DROP SCHEMA IF EXISTS "{validate_schema_name(schema)}" CASCADE')


def state_counts(tables: QueueTables) -> Executable:
    jobs = tables.jobs
    return select(jobs.c.state.cast(Text), func.count()).group_by(jobs.c.state)


def task_summary(tables: QueueTables) -> Executable:
    """Per task and state: how many jobs, and how many attempts they took."""
    jobs = tables.jobs
    return (
        select(
            jobs.c.task,
            jobs.c.state.cast(Text),
            func.count(),
            func.sum(jobs.c.attempt).cast(Integer),
        )
        .group_by(jobs.c.task, jobs.c.state)
        .order_by(jobs.c.task, jobs.c.state)
    )


def retries_and_workers(tables: QueueTables) -> Executable:
    """How many jobs took more than one attempt, and how many workers ran jobs."""
    jobs = tables.jobs
    return select(func.count().filter(jobs.c.attempt > 1), func.count(distinct(jobs.c.worker_id)))


def last_failure(tables: QueueTables) -> Executable:
    jobs = tables.jobs
    return select(jobs.c.error["message"].astext).where(in_states(jobs.c.state, "failed")).limit(1)
