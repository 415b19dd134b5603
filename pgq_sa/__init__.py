"""pgq_sa: the PostgreSQL database your application already has, as its background job queue.

Tables are SQLAlchemy Core metadata in a schema of their own, installed with Alembic; jobs are
enqueued on the application's own Session or Connection, in its transaction; a thread-pool worker
and an anyio worker (asyncio or trio) run them with the same SQL. Workflows chain jobs: a step
starts once the steps it waits for have succeeded.
"""

import logging

from pgq_sa._errors import (
    ConfigurationError,
    DatabaseMissing,
    DatabaseUnreachable,
    DedupeConflict,
    JobCancelled,
    JobTimeout,
    MigrationError,
    PgqError,
    SchemaMissing,
    SchemaOutdated,
    StatementDeadline,
    TransactionEnded,
    UpstreamFailed,
    WorkerLost,
)
from pgq_sa._job import Job, JobError, JobInfo, JobSpec, Retry
from pgq_sa._queue import Queue
from pgq_sa._schema import JobStatus
from pgq_sa._tasks import RateLimit
from pgq_sa._worker import AsyncWorker, ThreadWorker
from pgq_sa._workflow import Workflow, WorkflowInfo, WorkflowStatus

__all__ = [
    "AsyncWorker",
    "ConfigurationError",
    "DatabaseMissing",
    "DatabaseUnreachable",
    "DedupeConflict",
    "Job",
    "JobCancelled",
    "JobError",
    "JobInfo",
    "JobSpec",
    "JobStatus",
    "JobTimeout",
    "MigrationError",
    "PgqError",
    "Queue",
    "RateLimit",
    "Retry",
    "SchemaMissing",
    "SchemaOutdated",
    "StatementDeadline",
    "ThreadWorker",
    "TransactionEnded",
    "UpstreamFailed",
    "WorkerLost",
    "Workflow",
    "WorkflowInfo",
    "WorkflowStatus",
]
__version__ = "0.1.0"

# Every logger of the package is "pgq_sa.<part>"; the application decides where they go.
logging.getLogger("pgq_sa").addHandler(logging.NullHandler())
