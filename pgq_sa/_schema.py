"""The queue's tables as SQLAlchemy Core metadata, built for one PostgreSQL schema.

Everything pgq_sa stores lives in a schema of its own (default ``pgq``) so that an application's
Alembic autogenerate never sees it and two queues in one database never mix.

Hot-path choice (finished jobs must not slow the claim): finished jobs stay in ``jobs`` and every
index a worker reads is *partial* on live states, so succeeded/failed/cancelled rows are invisible
to the claim, dedupe and rescue paths; retention deletes them in bounded batches through their own
partial index. This keeps completion a single in-place ``UPDATE`` (no move to a history table, no
second write) while the claim reads only queued rows. ``jobs`` is created with a lower fillfactor
and aggressive per-table autovacuum so the frequent updates find room on the same page.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Enum,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    event,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

DEFAULT_SCHEMA = "pgq"
MAX_TASK_NAME_LENGTH = 255
MAX_QUEUE_NAME_LENGTH = 255
MAX_DEDUPE_KEY_LENGTH = 1024
PRIORITY_MIN = -32768
PRIORITY_MAX = 32767
MAX_ATTEMPTS_LIMIT = 1000
VERSION_TABLE = "pgq_sa_version"
# Every state but ``waiting``, for predicates that must not name it (see step 0004).
NOT_WAITING = "('queued', 'running', 'succeeded', 'failed', 'cancelled')"

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_RESERVED_SCHEMAS = frozenset({"public", "information_schema"})


class JobStatus(str, enum.Enum):
    """The state of a job. ``queued -> running -> succeeded | failed | cancelled``; a workflow
    step is ``waiting`` until every step it depends on has finished."""

    queued = "queued"
    waiting = "waiting"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:
        return self.value


def validate_schema_name(name: object) -> str:
    """Return ``name`` if it is usable as the queue's schema, else raise ValueError/TypeError."""
    if not isinstance(name, str):
        raise TypeError(f"schema must be a str, got {type(name).__name__}")
    if not _SCHEMA_NAME.fullmatch(name) or len(name) > 63:
        raise ValueError(
            f"schema {name!r} is not allowed: use 1-63 lowercase letters, digits and underscores, "
            "starting with a letter or underscore (for example 'pgq')"
        )
    if name.startswith("pg_") or name in _RESERVED_SCHEMAS:
        raise ValueError(
            f"schema {name!r} is reserved or shared; "
            "give the queue a schema of its own (e.g. 'pgq')"
        )
    return name


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which ``schema`` announces claimable jobs and cancellations."""
    return f"pgq_sa.{schema}"


def finished_channel(schema: str) -> str:
    """The channel on which ``schema`` announces finished jobs, for ``Queue.wait``."""
    return f"pgq_sa.{schema}.finished"


@dataclass(frozen=True)
class QueueTables:
    """The Core tables of one queue schema; ``metadata`` holds them all."""

    schema: str
    metadata: MetaData
    jobs: Table
    workers: Table
    queues: Table
    task_limits: Table
    schedules: Table
    workflows: Table
    job_dependencies: Table
    settings: Table


def _jobs_table(metadata: MetaData, state_enum: Enum) -> Table:
    live = "state IN ('queued', 'running')"
    return Table(
        "jobs",
        metadata,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("queue", Text, nullable=False, server_default="default"),
        Column("task", Text, nullable=False),
        Column("payload", JSONB(none_as_null=True), nullable=True),
        Column("priority", SmallInteger, nullable=False, server_default="0"),
        Column("state", state_enum, nullable=False, server_default="queued"),
        Column("attempt", Integer, nullable=False, server_default="0"),
        Column("max_attempts", Integer, nullable=False, server_default="20"),
        Column("run_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("dedupe_key", Text, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("started_at", DateTime(timezone=True), nullable=True),
        Column("finished_at", DateTime(timezone=True), nullable=True),
        Column("worker_id", Uuid, nullable=True),
        Column("timeout", Double, nullable=True),
        Column("cancel_requested", Boolean, nullable=False, server_default="false"),
        Column("error", JSONB(none_as_null=True), nullable=True),
        Column("result", JSONB(none_as_null=True), nullable=True),
        Column("schedule", Text, nullable=True),
        Column("scheduled_at", DateTime(timezone=True), nullable=True),
        Column("meta", JSONB(none_as_null=True), nullable=True),
        # Set by Queue.wait: the statement that finishes this job announces it (a NOTIFY on the
        # finished channel); jobs nobody waits for finish without one (migration step 0003).
        Column("awaited", Boolean, nullable=False, server_default="false"),
        # Workflows (migration step 0004): the step's workflow, how many of the steps it depends
        # on have not finished yet (it is ``waiting`` until none), and what an upstream failure
        # does to it ("cancel" or "run"); NULL outside workflows.
        Column("workflow_id", BigInteger, nullable=True),
        Column("waiting_for", Integer, nullable=False, server_default="0"),
        Column("on_upstream_failure", Text, nullable=True),
        # No CHECK constraints: the row rules are a trigger (jobs_rules_ddl), which claims and
        # finishes do not pay for.
        # The claim path: queued jobs only, in the claim's own order.
        Index(
            "jobs_claim_idx",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text("state = 'queued'"),
        ),
        # A dedupe key is held only while its job is live.
        Index(
            "jobs_dedupe_key_idx",
            "dedupe_key",
            unique=True,
            postgresql_where=text(f"dedupe_key IS NOT NULL AND {live}"),
        ),
        # Lease checks, heartbeats and crash rescue look up running jobs by their holder.
        Index("jobs_running_worker_idx", "worker_id", postgresql_where=text("state = 'running'")),
        # Each fire time of a periodic schedule becomes at most one job.
        Index(
            "jobs_schedule_fire_idx",
            "schedule",
            "scheduled_at",
            unique=True,
            postgresql_where=text("schedule IS NOT NULL"),
        ),
        # Retention prunes finished jobs oldest first.
        Index(
            "jobs_finished_idx",
            "finished_at",
            postgresql_where=text("state IN ('succeeded', 'failed', 'cancelled')"),
        ),
        # Monitoring counts and lists failed and cancelled jobs without reading the (much
        # larger) succeeded history (migration step 0002).
        Index(
            "jobs_unsuccessful_idx",
            "state",
            "queue",
            "task",
            "id",
            postgresql_where=text("state IN ('failed', 'cancelled')"),
        ),
        # A workflow's steps, and its waiting steps (written without naming the state, which the
        # step adding it could not use: "none of the other five").
        Index(
            "jobs_workflow_idx",
            "workflow_id",
            "id",
            postgresql_where=text("workflow_id IS NOT NULL"),
        ),
        Index(
            "jobs_waiting_idx",
            "queue",
            "task",
            postgresql_where=text(f"state NOT IN {NOT_WAITING}"),
        ),
        # One holder per key among every unfinished job, waiting workflow steps included (step
        # 0005). The enqueue's ON CONFLICT predicate (the live one above) implies this one's, so
        # PostgreSQL takes both indexes as arbiters.
        Index(
            "jobs_held_key_idx",
            "dedupe_key",
            unique=True,
            postgresql_where=text(
                "dedupe_key IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'cancelled')"
            ),
        ),
    )


def _workers_table(metadata: MetaData) -> Table:
    return Table(
        "workers",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("name", Text, nullable=False),
        Column("kind", Text, nullable=False),
        Column("hostname", Text, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("queues", ARRAY(Text), nullable=True),
        Column("tasks", ARRAY(Text), nullable=False),
        Column("concurrency", Integer, nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("heartbeat_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # The worker's own settings (step 0004): the rescue judges each worker by its own lease.
        Column("heartbeat_interval", Double, nullable=True),
        Column("lease_timeout", Double, nullable=True),
        Index("workers_heartbeat_idx", "heartbeat_at"),
    )


def _queues_table(metadata: MetaData) -> Table:
    return Table(
        "queues",
        metadata,
        Column("name", Text, primary_key=True),
        Column("paused", Boolean, nullable=False, server_default="false"),
        Column("paused_at", DateTime(timezone=True), nullable=True),
        Column("concurrency", Integer, nullable=True),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        CheckConstraint("concurrency IS NULL OR concurrency >= 1", name="queue_concurrency"),
    )


def _task_limits_table(metadata: MetaData) -> Table:
    """Cluster-wide concurrency and rate limits per task, with the rate window's state."""
    return Table(
        "task_limits",
        metadata,
        Column("task", Text, primary_key=True),
        Column("concurrency", Integer, nullable=True),
        Column("rate_count", Integer, nullable=True),
        Column("rate_period", Double, nullable=True),
        Column("window_start", DateTime(timezone=True), nullable=True),
        Column("window_used", Integer, nullable=False, server_default="0"),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        CheckConstraint("concurrency IS NULL OR concurrency >= 1", name="limit_concurrency"),
        CheckConstraint(
            "(rate_count IS NULL) = (rate_period IS NULL) "
            "AND (rate_count IS NULL OR (rate_count >= 1 AND rate_period > 0))",
            name="limit_rate",
        ),
    )


def _schedules_table(metadata: MetaData) -> Table:
    return Table(
        "schedules",
        metadata,
        Column("name", Text, primary_key=True),
        Column("task", Text, nullable=False),
        Column("expression", Text, nullable=False),
        Column("timezone", Text, nullable=False, server_default="UTC"),
        Column("enabled", Boolean, nullable=False, server_default="true"),
        Column("missed", Text, nullable=False, server_default="latest"),
        Column("last_fire_at", DateTime(timezone=True), nullable=True),
        Column("next_fire_at", DateTime(timezone=True), nullable=True),
        Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def _workflows_table(metadata: MetaData) -> Table:
    return Table(
        "workflows",
        metadata,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("name", Text, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        CheckConstraint(
            f"name IS NULL OR char_length(name) BETWEEN 1 AND {MAX_TASK_NAME_LENGTH}",
            name="name_length",
        ),
    )


def _job_dependencies_table(metadata: MetaData) -> Table:
    """The edges of workflows: ``job_id`` waits for ``depends_on`` (no foreign keys: they would
    cost every enqueue a trigger; the statements keep the edges consistent)."""
    return Table(
        "job_dependencies",
        metadata,
        Column("depends_on", BigInteger, primary_key=True),
        Column("job_id", BigInteger, primary_key=True),
        Index("job_dependencies_job_idx", "job_id", "depends_on"),
    )


def _settings_table(metadata: MetaData) -> Table:
    """Per-schema settings, such as the durability level."""
    return Table(
        "settings",
        metadata,
        Column("name", Text, primary_key=True),
        Column("value", Text, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def build_tables(schema: str = DEFAULT_SCHEMA) -> QueueTables:
    """Build the Core metadata of a queue living in PostgreSQL schema ``schema``."""
    validate_schema_name(schema)
    metadata = MetaData(
        schema=schema,
        naming_convention={
            "ck": "%(table_name)s_%(constraint_name)s_check",
            "pk": "%(table_name)s_pkey",
        },
    )
    state_enum = Enum(
        JobStatus,
        name="job_state",
        schema=schema,
        metadata=metadata,
        values_callable=lambda states: [s.value for s in states],
    )
    jobs = _jobs_table(metadata, state_enum)
    after_create = [jobs_storage_ddl(schema), *jobs_rules_ddl(schema), *notify_trigger_ddl(schema)]
    for statement in after_create:
        event.listen(jobs, "after_create", DDL(statement))  # type: ignore[no-untyped-call]
    return QueueTables(
        schema=schema,
        metadata=metadata,
        jobs=jobs,
        workers=_workers_table(metadata),
        queues=_queues_table(metadata),
        task_limits=_task_limits_table(metadata),
        schedules=_schedules_table(metadata),
        workflows=_workflows_table(metadata),
        job_dependencies=_job_dependencies_table(metadata),
        settings=_settings_table(metadata),
    )


# The storage parameters step 0001 gives ``jobs`` (see the module docstring). Set by a DDL event
# rather than ``Table(postgresql_with=...)``, which only SQLAlchemy 2.1 accepts.
JOBS_STORAGE = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_insert_scale_factor": "0.01",
    "autovacuum_analyze_scale_factor": "0.02",
}


def jobs_storage_ddl(schema: str) -> str:
    """``ALTER TABLE`` giving ``<schema>.jobs`` its storage parameters after ``create_all``."""
    validate_schema_name(schema)
    settings = ", ".join(f"{name} = {value}" for name, value in JOBS_STORAGE.items())
    return f'ALTER TABLE "{schema}".jobs SET ({settings})'


# The rules every jobs row obeys, as (constraint name, condition on the row ``NEW``). They were
# CHECK constraints until migration step 0006; PostgreSQL prepares a table's CHECKs afresh for
# every statement writing to it, so each claim and finish paid for all of them. A row trigger
# checks them instead, on INSERT and on an UPDATE setting one of ``RULE_COLUMNS``: the columns a
# producer or an operator supplies. The worker's own transitions (state, attempt, worker_id and
# the times and results that go with them) are written only by the claim and finish statements.
JOBS_ROW_RULES: tuple[tuple[str, str], ...] = (
    ("jobs_task_length_check", f"char_length(NEW.task) BETWEEN 1 AND {MAX_TASK_NAME_LENGTH}"),
    ("jobs_queue_length_check", f"char_length(NEW.queue) BETWEEN 1 AND {MAX_QUEUE_NAME_LENGTH}"),
    ("jobs_max_attempts_range_check", f"NEW.max_attempts BETWEEN 1 AND {MAX_ATTEMPTS_LIMIT}"),
    ("jobs_attempt_range_check", "NEW.attempt BETWEEN 0 AND NEW.max_attempts"),
    (
        "jobs_running_has_lease_check",
        "NEW.state <> 'running' OR (NEW.worker_id IS NOT NULL AND NEW.attempt >= 1)",
    ),
    (
        "jobs_dedupe_key_length_check",
        "NEW.dedupe_key IS NULL OR char_length(NEW.dedupe_key) "
        f"BETWEEN 1 AND {MAX_DEDUPE_KEY_LENGTH}",
    ),
    ("jobs_timeout_positive_check", "NEW.timeout IS NULL OR NEW.timeout > 0"),
    ("jobs_waiting_for_check", "NEW.waiting_for >= 0"),
    (
        "jobs_on_upstream_failure_check",
        "NEW.on_upstream_failure IS NULL OR NEW.on_upstream_failure IN ('cancel', 'run')",
    ),
)
RULE_COLUMNS = (
    "task",
    "queue",
    "max_attempts",
    "dedupe_key",
    "timeout",
    "waiting_for",
    "on_upstream_failure",
)


def jobs_rules_ddl(schema: str) -> list[str]:
    """DDL of the row trigger checking :data:`JOBS_ROW_RULES`: its WHEN clause is the rules'
    conjunction negated, so the function runs only for a row that breaks one, and raises what a
    CHECK raises (SQLSTATE 23514, the constraint named)."""
    validate_schema_name(schema)
    cases = "\n".join(
        f"        WHEN NOT coalesce({rule}, true) THEN '{name}'" for name, rule in JOBS_ROW_RULES
    )
    every_rule = " AND ".join(f"({rule})" for _, rule in JOBS_ROW_RULES)
    function = f"""
CREATE OR REPLACE FUNCTION "{schema}".jobs_check_rules() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    broken text;
BEGIN
    broken := CASE
{cases}
    END;
    IF broken IS NOT NULL THEN
        RAISE EXCEPTION USING
            MESSAGE = 'new row for relation "' || TG_TABLE_NAME
                      || '" violates check constraint "' || broken || '"',
            ERRCODE = 'check_violation', CONSTRAINT = broken,
            TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END
$$"""
    trigger = f"""
CREATE TRIGGER jobs_check_rules
    BEFORE INSERT OR UPDATE OF {", ".join(RULE_COLUMNS)} ON "{schema}".jobs
    FOR EACH ROW
    WHEN (NOT ({every_rule}))
    EXECUTE FUNCTION "{schema}".jobs_check_rules()"""
    return [function, trigger]


def notify_trigger_ddl(schema: str) -> list[str]:
    """DDL statements of the statement-level trigger that announces inserted jobs with one NOTIFY.

    The message names the queues and tasks of the inserted queued jobs and the earliest ``run_at``
    (so a worker can wake for a delayed job), never the payload; PostgreSQL delivers it at commit.
    """
    validate_schema_name(schema)
    channel = notify_channel(schema)
    function = f"""
CREATE OR REPLACE FUNCTION "{schema}".notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    tasks text[];
    queues text[];
    first_run_at timestamptz;
    message text;
BEGIN
    SELECT array_agg(DISTINCT task), array_agg(DISTINCT queue), min(run_at)
      INTO tasks, queues, first_run_at
      FROM new_jobs
     WHERE state = 'queued';
    IF tasks IS NULL THEN
        RETURN NULL;
    END IF;
    message := json_build_object(
        'tasks', tasks, 'queues', queues, 'run_at', extract(epoch FROM first_run_at))::text;
    IF octet_length(message) > 7900 THEN
        message := json_build_object(
            'tasks', NULL, 'queues', NULL, 'run_at', extract(epoch FROM first_run_at))::text;
    END IF;
    PERFORM pg_notify('{channel}', message);
    RETURN NULL;
END
$$"""
    trigger = f"""
CREATE TRIGGER jobs_notify_inserted
    AFTER INSERT ON "{schema}".jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".notify_jobs_inserted()"""
    return [function, trigger]


def drop_notify_trigger_ddl(schema: str) -> list[str]:
    """DDL statements removing what :func:`notify_trigger_ddl` created."""
    validate_schema_name(schema)
    return [
        f'DROP TRIGGER IF EXISTS jobs_notify_inserted ON "{schema}".jobs',
        f'DROP FUNCTION IF EXISTS "{schema}".notify_jobs_inserted()',
    ]
