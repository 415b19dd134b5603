"""Read-only statements behind status, job listings, workers, the dashboard and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Double,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.sql.expression import ColumnElement, Executable

from pgq_sa._schema import JobStatus, QueueTables
from pgq_sa._sql.shared import in_states, live_states, one_second

FINISHED_STATES = ("succeeded", "failed", "cancelled")
JOB_LIST_STATES: tuple[str | None, ...] = (None, *(status.value for status in JobStatus))


@dataclass(frozen=True)
class MonitoringStatements:
    """The read-only statements behind ``pgq-sa status``, ``jobs list``, ``workers`` and the
    dashboard (see :mod:`pgq_sa._monitoring`)."""

    clock: Executable
    task_backlog: Executable
    recent_finished: Executable
    unsuccessful_counts: Executable
    start_latency: Executable
    list_workers: Executable
    queue_settings: Executable
    list_jobs: dict[str | None, Executable]

    @classmethod
    def build(cls, tables: QueueTables) -> MonitoringStatements:
        return cls(
            clock=select(func.now().label("now")),
            task_backlog=task_backlog(tables),
            recent_finished=recent_finished(tables),
            unsuccessful_counts=unsuccessful_counts(tables),
            start_latency=start_latency(tables),
            list_workers=list_workers(tables),
            queue_settings=queue_settings(tables),
            list_jobs={status: list_jobs(tables, status) for status in JOB_LIST_STATES},
        )


def seconds_ago(name: str) -> ColumnElement[Any]:
    return func.now() - bindparam(name, type_=Double) * one_second()


def age(moment: ColumnElement[Any]) -> ColumnElement[float]:
    """Seconds from ``moment`` to the statement's ``now()``."""
    return func.extract("epoch", func.now() - moment).cast(Double)


def task_backlog(tables: QueueTables) -> Executable:
    """Live jobs per (queue, task): due, scheduled for later, running, workflow steps waiting for
    others, and the oldest due one."""
    jobs = tables.jobs
    queued = in_states(jobs.c.state, "queued")
    due = and_(queued, jobs.c.run_at <= func.now())
    oldest = func.min(jobs.c.run_at).filter(due)
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.count().filter(due).label("due"),
            func.count().filter(and_(queued, jobs.c.run_at > func.now())).label("scheduled"),
            func.count().filter(in_states(jobs.c.state, "running")).label("running"),
            func.count().filter(in_states(jobs.c.state, "waiting")).label("waiting"),
            oldest.label("oldest_due_at"),
            age(oldest).label("oldest_wait"),
        )
        .where(or_(live_states(jobs.c.state), in_states(jobs.c.state, "waiting")))
        .group_by(jobs.c.queue, jobs.c.task)
        .order_by(jobs.c.queue, jobs.c.task)
    )


def recent_finished(tables: QueueTables) -> Executable:
    """Jobs finished in the last ``window`` seconds per (queue, task), by outcome, and how many
    of them in the last ``short_window`` seconds (a range of the finished-at index)."""
    jobs = tables.jobs
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.count().filter(in_states(jobs.c.state, "succeeded")).label("succeeded"),
            func.count().filter(in_states(jobs.c.state, "failed")).label("failed"),
            func.count().filter(in_states(jobs.c.state, "cancelled")).label("cancelled"),
            func.count().filter(jobs.c.finished_at > seconds_ago("short_window")).label("short"),
        )
        .where(
            in_states(jobs.c.state, *FINISHED_STATES),
            jobs.c.finished_at > seconds_ago("window"),
        )
        .group_by(jobs.c.queue, jobs.c.task)
    )


def unsuccessful_counts(tables: QueueTables) -> Executable:
    """Failed and cancelled jobs still kept, per (queue, task): an index-only scan of their
    partial index (migration step 0002), never the succeeded history."""
    jobs = tables.jobs
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.count().filter(in_states(jobs.c.state, "failed")).label("failed"),
            func.count().filter(in_states(jobs.c.state, "cancelled")).label("cancelled"),
        )
        .where(in_states(jobs.c.state, "failed", "cancelled"))
        .group_by(jobs.c.queue, jobs.c.task)
    )


def start_latency(tables: QueueTables) -> Executable:
    """How long recently started jobs waited from ``run_at`` to their start: count, p50, p95 and
    max per queue, plus one row for all queues (``queue`` NULL). The sample is the running jobs
    started in the last ``window`` seconds and the newest ``sample`` jobs finished in it (a
    bounded backward range of the finished-at index, whatever the throughput)."""
    jobs = tables.jobs
    started_recently = and_(
        jobs.c.started_at > seconds_ago("window"), jobs.c.started_at >= jobs.c.run_at
    )
    wait = func.extract("epoch", jobs.c.started_at - jobs.c.run_at).cast(Double).label("wait")
    running = select(jobs.c.queue, wait).where(in_states(jobs.c.state, "running"), started_recently)
    finished = (
        select(jobs.c.queue, wait)
        .where(
            in_states(jobs.c.state, *FINISHED_STATES),
            jobs.c.finished_at > seconds_ago("window"),
            started_recently,
        )
        .order_by(jobs.c.finished_at.desc())
        .limit(bindparam("sample", type_=Integer))
        .subquery("finished")
    )
    waits = running.union_all(select(finished.c.queue, finished.c.wait)).subquery("waits")
    return (
        select(
            waits.c.queue,
            func.count().label("started"),
            func.percentile_cont(0.5).within_group(waits.c.wait).cast(Double).label("p50"),
            func.percentile_cont(0.95).within_group(waits.c.wait).cast(Double).label("p95"),
            func.max(waits.c.wait).label("max"),
        )
        .group_by(func.grouping_sets(waits.c.queue, text("()")))
        .order_by(waits.c.queue.nulls_first())
    )


def list_workers(tables: QueueTables) -> Executable:
    """Every registered worker (live, or dead and not yet forgotten by a rescue), with the
    heartbeat's age and how many jobs it runs."""
    jobs, workers = tables.jobs, tables.workers
    running = (
        select(func.count())
        .where(in_states(jobs.c.state, "running"), jobs.c.worker_id == workers.c.id)
        .scalar_subquery()
    )
    return select(
        workers.c.id,
        workers.c.name,
        workers.c.kind,
        workers.c.hostname,
        workers.c.pid,
        workers.c.queues,
        workers.c.tasks,
        workers.c.concurrency,
        workers.c.started_at,
        workers.c.heartbeat_at,
        age(workers.c.heartbeat_at).label("heartbeat_age"),
        running.label("running"),
        workers.c.heartbeat_interval,
        workers.c.lease_timeout,
    ).order_by(workers.c.started_at, workers.c.name)


def queue_settings(tables: QueueTables) -> Executable:
    queues = tables.queues
    return select(queues.c.name, queues.c.paused, queues.c.paused_at).order_by(queues.c.name)


def job_summary_columns(tables: QueueTables) -> list[ColumnElement[Any]]:
    """A job without its payload, result or traceback: one line of a job listing."""
    jobs = tables.jobs
    return [
        jobs.c.id,
        jobs.c.task,
        jobs.c.queue,
        jobs.c.state,
        jobs.c.attempt,
        jobs.c.max_attempts,
        jobs.c.priority,
        jobs.c.created_at,
        jobs.c.run_at,
        jobs.c.started_at,
        jobs.c.finished_at,
        jobs.c.worker_id,
        jobs.c.error["type"].astext.label("error_type"),
        jobs.c.error["message"].astext.label("error_message"),
    ]


def list_jobs(tables: QueueTables, status: str | None) -> Executable:
    """The newest ``limit`` jobs, optionally of one state (a literal, so each variant can use its
    state's partial index), one task and one queue."""
    jobs = tables.jobs
    task = bindparam("task", type_=Text)
    queue = bindparam("queue", type_=Text)
    conditions = [
        or_(task.is_(None), jobs.c.task == task),
        or_(queue.is_(None), jobs.c.queue == queue),
    ]
    if status is not None:
        conditions.append(in_states(jobs.c.state, status))
    return (
        select(*job_summary_columns(tables))
        .where(*conditions)
        .order_by(jobs.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


# --- tests (pgq_sa.testing) --------------------------------------------------------------------
