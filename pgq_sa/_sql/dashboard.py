"""Read-only statements behind the web dashboard's pages and its live updates.

Each reads what an index bounds, like the monitoring statements it sits beside: recent finishes
through the finished-at index (a range, or the newest N of it), job pages by primary key below a
keyset cursor (with a bounded id window when a filter has no index of its own), failed jobs
through their partial index, workflows and their steps through the workflow index. States are SQL
literals (see :func:`pgq_sa._sql.shared.in_states`) so generic plans keep the partial indexes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    literal,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.sql.expression import ColumnElement, Executable

from pgq_sa._schema import JobStatus, QueueTables
from pgq_sa._sql.monitoring import FINISHED_STATES, job_summary_columns, seconds_ago
from pgq_sa._sql.producer import job_columns
from pgq_sa._sql.shared import in_states

# The job list's variants: a state (or any), filtered by task or not, by queue or not.
JOB_PAGE_STATES: tuple[str | None, ...] = (None, *(status.value for status in JobStatus))
JobPageKey = tuple[str | None, bool, bool]
# States whose jobs have an index of their own (partial, or bounded in number): a filtered page
# of them needs no id window. ``None`` and ``succeeded`` read the history by primary key.
INDEXED_STATES = frozenset({"queued", "waiting", "running", "failed", "cancelled"})
OTHER_THAN_WAITING = ("queued", "running", "succeeded", "failed", "cancelled")

# What each dashboard action updates or inserts, for the privilege check (table, column).
CANCEL_COLUMNS = ("state", "finished_at", "cancel_requested")
RETRY_COLUMNS = (
    "state",
    "run_at",
    "finished_at",
    "started_at",
    "cancel_requested",
    "worker_id",
    "max_attempts",
)
PAUSE_COLUMNS = ("name", "paused", "paused_at", "updated_at")
SCHEDULE_COLUMNS = ("enabled", "updated_at")
READ_TABLES = ("jobs", "workers", "queues", "schedules", "workflows", "job_dependencies")


@dataclass(frozen=True)
class DashboardStatements:
    """The read-only statements of the web dashboard (see :mod:`pgq_sa._dashboard`)."""

    statement_timeout: Executable
    tables_present: Executable
    privileges: Executable
    change_marker: Executable
    newest_id: Executable
    throughput: Executable
    task_runtimes: Executable
    job_page: dict[JobPageKey, Executable]
    job_page_windowed: dict[JobPageKey, Executable]
    jobs_by_dedupe_key: Executable
    job_detail: Executable
    job_detail_alone: Executable
    job_neighbours: Executable
    failure_groups: Executable
    failure_group_ids: Executable
    workflow_page: Executable
    workflow: Executable
    workflow_steps: Executable
    workflow_edges: Executable

    @classmethod
    def build(cls, tables: QueueTables) -> DashboardStatements:
        keys = list(itertools.product(JOB_PAGE_STATES, (False, True), (False, True)))
        return cls(
            statement_timeout=select(
                func.set_config("statement_timeout", bindparam("timeout", type_=Text), True)
            ),
            tables_present=tables_present(tables),
            privileges=privileges(tables),
            change_marker=change_marker(tables),
            newest_id=select(func.max(tables.jobs.c.id)),
            throughput=throughput(tables),
            task_runtimes=task_runtimes(tables),
            job_page={key: job_page(tables, *key, windowed=False) for key in keys},
            job_page_windowed={key: job_page(tables, *key, windowed=True) for key in keys},
            jobs_by_dedupe_key=jobs_by_dedupe_key(tables),
            job_detail=job_detail(tables, with_worker=True),
            job_detail_alone=job_detail(tables, with_worker=False),
            job_neighbours=job_neighbours(tables),
            failure_groups=failure_groups(tables),
            failure_group_ids=failure_group_ids(tables),
            workflow_page=workflow_page(tables),
            workflow=workflow(tables),
            workflow_steps=workflow_steps(tables),
            workflow_edges=workflow_edges(tables),
        )


def _qualified(tables: QueueTables, table: str) -> str:
    return f'"{tables.schema}"."{table}"'


def tables_present(tables: QueueTables) -> Executable:
    """Whether each table the dashboard reads exists (``to_regclass`` never raises)."""
    return select(
        *(
            (func.to_regclass(literal(_qualified(tables, name))).is_not(None)).label(name)
            for name in READ_TABLES
        )
    )


def privileges(tables: QueueTables) -> Executable:
    """What the current role may read and do: SELECT per table, and the column privileges each
    action's existing statement needs (UPDATE/INSERT on exactly the columns it writes)."""

    def columns(table: str, privilege: str, names: tuple[str, ...]) -> ColumnElement[bool]:
        return and_(
            *(
                func.has_column_privilege(literal(_qualified(tables, table)), name, privilege)
                for name in names
            )
        )

    reads = [
        func.has_table_privilege(literal(_qualified(tables, name)), "SELECT").label(f"read_{name}")
        for name in READ_TABLES
    ]
    return select(
        *reads,
        columns("jobs", "UPDATE", CANCEL_COLUMNS).label("cancel"),
        columns("jobs", "UPDATE", RETRY_COLUMNS).label("retry"),
        and_(
            columns("queues", "INSERT", PAUSE_COLUMNS), columns("queues", "UPDATE", PAUSE_COLUMNS)
        ).label("pause"),
        columns("schedules", "UPDATE", SCHEDULE_COLUMNS).label("schedules"),
        func.current_user().label("role"),
    )


def change_marker(tables: QueueTables) -> Executable:
    """A cheap fingerprint of what the pages show: the newest job id, the newest finish, how many
    jobs run and wait, the latest queue switch. Each is one end of an index or a small partial
    index; the live-update poller compares it with the previous one."""
    jobs, queues = tables.jobs, tables.queues
    return select(
        select(func.max(jobs.c.id)).scalar_subquery().label("newest_id"),
        select(func.max(jobs.c.finished_at))
        .where(in_states(jobs.c.state, *FINISHED_STATES))
        .scalar_subquery()
        .label("newest_finish"),
        select(func.count())
        .where(in_states(jobs.c.state, "running"))
        .scalar_subquery()
        .label("running"),
        select(func.count())
        .where(in_states(jobs.c.state, "queued"))
        .scalar_subquery()
        .label("queued"),
        select(func.max(queues.c.updated_at)).scalar_subquery().label("queues_changed"),
    )


def throughput(tables: QueueTables) -> Executable:
    """Jobs finished per minute over the last ``window`` seconds, by outcome (a range of the
    finished-at index)."""
    jobs = tables.jobs
    minute = func.date_trunc("minute", jobs.c.finished_at).label("minute")
    return (
        select(
            minute,
            func.count().filter(in_states(jobs.c.state, "succeeded")).label("succeeded"),
            func.count().filter(in_states(jobs.c.state, "failed")).label("failed"),
            func.count().filter(in_states(jobs.c.state, "cancelled")).label("cancelled"),
        )
        .where(
            in_states(jobs.c.state, *FINISHED_STATES), jobs.c.finished_at > seconds_ago("window")
        )
        .group_by(minute)
        .order_by(minute)
    )


def _percentile(fraction: float, value: ColumnElement[Any]) -> ColumnElement[float]:
    return func.percentile_cont(fraction).within_group(value).cast(Double)


def task_runtimes(tables: QueueTables) -> Executable:
    """Run time (start to finish) per (queue, task) of the newest ``sample`` jobs finished in the
    last ``window`` seconds: count, p50, p95, max (a bounded backward range of the finished-at
    index, whatever the throughput)."""
    jobs = tables.jobs
    sample = (
        select(
            jobs.c.queue,
            jobs.c.task,
            func.extract("epoch", jobs.c.finished_at - jobs.c.started_at)
            .cast(Double)
            .label("runtime"),
        )
        .where(
            in_states(jobs.c.state, *FINISHED_STATES),
            jobs.c.finished_at > seconds_ago("window"),
            jobs.c.started_at.is_not(None),
        )
        .order_by(jobs.c.finished_at.desc())
        .limit(bindparam("sample", type_=Integer))
        .subquery("sample")
    )
    return (
        select(
            sample.c.queue,
            sample.c.task,
            func.count().label("sampled"),
            _percentile(0.5, sample.c.runtime).label("p50"),
            _percentile(0.95, sample.c.runtime).label("p95"),
            func.max(sample.c.runtime).label("max"),
        )
        .group_by(sample.c.queue, sample.c.task)
        .order_by(sample.c.queue, sample.c.task)
    )


def job_page(
    tables: QueueTables, status: str | None, by_task: bool, by_queue: bool, *, windowed: bool
) -> Executable:
    """One page of jobs, newest first, with ids below ``before`` (the keyset cursor).

    Each variant names only the filters it has (no ``:x IS NULL OR`` clauses that would defeat
    an index). ``windowed`` adds ``id >= :floor``: a task or queue filter on the whole history
    has no index, so it reads at most the window of ids below the cursor, and the page offers the
    next window.
    """
    jobs = tables.jobs
    conditions: list[ColumnElement[bool]] = [jobs.c.id < bindparam("before", type_=BigInteger)]
    if windowed:
        conditions.append(jobs.c.id >= bindparam("floor", type_=BigInteger))
    if status is not None:
        conditions.append(in_states(jobs.c.state, status))
    if by_task:
        conditions.append(jobs.c.task == bindparam("task", type_=Text))
    if by_queue:
        conditions.append(jobs.c.queue == bindparam("queue", type_=Text))
    return (
        select(*job_summary_columns(tables))
        .where(*conditions)
        .order_by(jobs.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


def jobs_by_dedupe_key(tables: QueueTables) -> Executable:
    """Jobs holding ``key``: the live holder (its unique partial index), an unfinished workflow
    step (its own), and any job among the newest ids from ``floor`` on (a bounded range)."""
    jobs = tables.jobs
    key = bindparam("key", type_=Text)
    columns = job_summary_columns(tables)
    live = select(*columns).where(jobs.c.dedupe_key == key, in_states(jobs.c.state, "queued"))
    running = select(*columns).where(jobs.c.dedupe_key == key, in_states(jobs.c.state, "running"))
    step = select(*columns).where(
        jobs.c.dedupe_key == key,
        jobs.c.workflow_id.is_not(None),
        ~in_states(jobs.c.state, *FINISHED_STATES),
    )
    recent = (  # newest first and limited: a backward range of the primary key
        select(*columns)
        .where(jobs.c.dedupe_key == key, jobs.c.id >= bindparam("floor", type_=BigInteger))
        .order_by(jobs.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
        .subquery("recent")
    )
    found = union_all(live, running, step, select(recent)).subquery("found")
    return (
        select(found)
        .distinct()
        .order_by(found.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


def job_detail(tables: QueueTables, *, with_worker: bool) -> Executable:
    """Everything stored about one job, and (``with_worker``, for roles that may read the
    workers table) the name of the worker that holds or held it."""
    jobs, workers = tables.jobs, tables.workers
    worker_name: ColumnElement[Any] = workers.c.name if with_worker else null()
    worker_host: ColumnElement[Any] = workers.c.hostname if with_worker else null()
    source = jobs.outerjoin(workers, workers.c.id == jobs.c.worker_id) if with_worker else jobs
    return (
        job_columns(tables)
        .add_columns(
            jobs.c.meta,
            jobs.c.timeout,
            jobs.c.schedule,
            jobs.c.worker_id,
            worker_name.label("worker_name"),
            worker_host.label("worker_host"),
            jobs.c.workflow_id,
            jobs.c.waiting_for,
            jobs.c.on_upstream_failure,
        )
        .select_from(source)
        .where(jobs.c.id == bindparam("job_id", type_=BigInteger))
    )


def job_neighbours(tables: QueueTables) -> Executable:
    """The workflow steps a job waits for (``upstream``) and those waiting for it
    (``downstream``), at most ``limit`` of each (the two indexes of the edges)."""
    jobs, edges = tables.jobs, tables.job_dependencies
    job_id = bindparam("job_id", type_=BigInteger)
    limit = bindparam("limit", type_=Integer)

    def side(direction: str, ours: Any, theirs: Any) -> Any:
        return (
            select(
                literal(direction, Text).label("direction"), jobs.c.id, jobs.c.task, jobs.c.state
            )
            .select_from(edges.join(jobs, jobs.c.id == theirs))
            .where(ours == job_id)
            .order_by(jobs.c.id)
            .limit(limit)
        )

    return union_all(
        side("upstream", edges.c.job_id, edges.c.depends_on),
        side("downstream", edges.c.depends_on, edges.c.job_id),
    )


def failure_groups(tables: QueueTables) -> Executable:
    """The newest ``sample`` failed jobs grouped by (queue, task, error type): how many, the
    newest id, when, and its message (the failed partial index, then those rows only)."""
    jobs = tables.jobs
    newest = (
        select(jobs.c.id)
        .where(in_states(jobs.c.state, "failed"))
        .order_by(jobs.c.id.desc())
        .limit(bindparam("sample", type_=Integer))
        .subquery("newest")
    )
    error_type = func.coalesce(jobs.c.error["type"].astext, "").label("error_type")
    newest_first = jobs.c.id.desc()
    return (
        select(
            jobs.c.queue,
            jobs.c.task,
            error_type,
            func.count().label("jobs"),
            func.max(jobs.c.id).label("newest_id"),
            func.max(jobs.c.finished_at).label("newest_at"),
            func.min(jobs.c.finished_at).label("oldest_at"),
            func.array_agg(aggregate_order_by(jobs.c.error["message"].astext, newest_first))[
                1
            ].label("message"),
        )
        .where(jobs.c.id.in_(select(newest.c.id)), in_states(jobs.c.state, "failed"))
        .group_by(jobs.c.queue, jobs.c.task, error_type)
        .order_by(func.count().desc(), jobs.c.queue, jobs.c.task, error_type)
    )


def failure_group_ids(tables: QueueTables) -> Executable:
    """Ids of up to ``limit`` failed jobs of one (queue, task, error type), oldest first (the
    failed partial index on (state, queue, task, id), then each row's error)."""
    jobs = tables.jobs
    return (
        select(jobs.c.id)
        .where(
            in_states(jobs.c.state, "failed"),
            jobs.c.queue == bindparam("queue", type_=Text),
            jobs.c.task == bindparam("task", type_=Text),
            func.coalesce(jobs.c.error["type"].astext, "") == bindparam("error_type", type_=Text),
        )
        .order_by(jobs.c.id)
        .limit(bindparam("limit", type_=Integer))
    )


def _step_counts(tables: QueueTables, workflow_id: ColumnElement[Any]) -> Any:
    """Per-state step counts of one workflow (its steps through the workflow index)."""
    jobs = tables.jobs
    # "none of the other five": the statement never names the ``waiting`` label (see step 0004)
    waiting = ~in_states(jobs.c.state, *OTHER_THAN_WAITING)
    return (
        select(
            func.count().label("steps"),
            func.count().filter(waiting).label("waiting"),
            func.count().filter(in_states(jobs.c.state, "queued")).label("queued"),
            func.count().filter(in_states(jobs.c.state, "running")).label("running"),
            func.count().filter(in_states(jobs.c.state, "succeeded")).label("succeeded"),
            func.count().filter(in_states(jobs.c.state, "failed")).label("failed"),
            func.count().filter(in_states(jobs.c.state, "cancelled")).label("cancelled"),
            func.max(jobs.c.finished_at).label("last_finished_at"),
        )
        .where(jobs.c.workflow_id == workflow_id)
        .lateral("steps")
    )


def workflow_page(tables: QueueTables) -> Executable:
    """Workflows with ids below ``before``, newest first, with their steps counted by state."""
    workflows = tables.workflows
    steps = _step_counts(tables, workflows.c.id)
    return (
        select(workflows.c.id, workflows.c.name, workflows.c.created_at, steps)
        .select_from(workflows)
        .join(steps, true())
        .where(workflows.c.id < bindparam("before", type_=BigInteger))
        .order_by(workflows.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


def workflow(tables: QueueTables) -> Executable:
    workflows = tables.workflows
    steps = _step_counts(tables, workflows.c.id)
    return (
        select(workflows.c.id, workflows.c.name, workflows.c.created_at, steps)
        .select_from(workflows)
        .join(steps, true())
        .where(workflows.c.id == bindparam("workflow_id", type_=BigInteger))
    )


def workflow_steps(tables: QueueTables) -> Executable:
    """The first ``limit`` steps of one workflow, by id (the workflow index)."""
    jobs = tables.jobs
    return (
        select(
            jobs.c.id,
            jobs.c.task,
            jobs.c.queue,
            jobs.c.state,
            jobs.c.attempt,
            jobs.c.max_attempts,
            jobs.c.waiting_for,
            jobs.c.on_upstream_failure,
            jobs.c.started_at,
            jobs.c.finished_at,
            jobs.c.error["type"].astext.label("error_type"),
        )
        .where(jobs.c.workflow_id == bindparam("workflow_id", type_=BigInteger))
        .order_by(jobs.c.id)
        .limit(bindparam("limit", type_=Integer))
    )


def workflow_edges(tables: QueueTables) -> Executable:
    """The dependency edges between the steps of one workflow (each step's edges through the
    edge index on ``job_id``)."""
    jobs, edges = tables.jobs, tables.job_dependencies
    return (
        select(edges.c.depends_on, edges.c.job_id)
        .select_from(edges.join(jobs, jobs.c.id == edges.c.job_id))
        .where(jobs.c.workflow_id == bindparam("workflow_id", type_=BigInteger))
        .order_by(edges.c.job_id, edges.c.depends_on)
        .limit(bindparam("limit", type_=Integer))
    )
