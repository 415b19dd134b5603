"""Least-privilege database roles for one queue schema: what each role needs, as GRANTs.

Three roles, from most to least trusted (see docs/security.md):

* the **owner** creates and owns the schema and runs the migrations (``pgq-sa db upgrade``);
  it is the only role that can change the schema, and it runs :func:`grant`;
* the **worker** role is what ``ThreadWorker``/``AsyncWorker`` need, and what operators need for
  ``retry``, ``pause``/``resume`` and enabling or disabling schedules;
* the **producer** role is what ``enqueue``/``enqueue_many``, ``get``, ``cancel`` and ``wait``
  need, and their workflow counterparts (``enqueue_workflow``, ``get_workflow``,
  ``cancel_workflow``, ``wait_workflow``), nothing more: it inserts jobs (only the columns an
  enqueue sets), workflows and their edges, reads them, and cancels jobs (which settles their
  waiting workflow dependents: ``waiting_for``, ``run_at`` and ``error`` too); it cannot delete
  jobs, touch workers, queues, limits or schedules, or run DDL. ``retry_workflow`` needs the
  worker role, like ``retry``.

LISTEN and ``pg_notify`` need no privilege, and the NOTIFY trigger runs as whoever inserts, so
producers wake workers without further grants. The plan below is data; the statements are built
by :class:`pgq_sa._sql.grants.Grant` from the queue's Core tables, identifiers quoted.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.expression import Executable

from pgq_sa._ops.drive import Operation, run_async, run_sync
from pgq_sa._schema import DEFAULT_SCHEMA, QueueTables, build_tables
from pgq_sa._sql.grants import Grant, jobs_id_sequence, workflows_id_sequence
from pgq_sa._sql.shared import INSERTED_COLUMNS

# (table, privilege, columns) per role; "()" means the whole table.
_ALL_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
WORKER_PLAN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    *(("jobs", p, ()) for p in _ALL_WRITE),
    *(("workers", p, ()) for p in _ALL_WRITE),
    *(("queues", p, ()) for p in ("SELECT", "INSERT", "UPDATE")),
    *(("task_limits", p, ()) for p in ("SELECT", "INSERT", "UPDATE")),
    *(("schedules", p, ()) for p in ("SELECT", "INSERT", "UPDATE")),
    *(("workflows", p, ()) for p in _ALL_WRITE),
    *(("job_dependencies", p, ()) for p in _ALL_WRITE),
    ("settings", "SELECT", ()),  # the durability level, read at start (set by the owner)
)
# What a workflow step's insert sets beyond a plain job's.
STEP_COLUMNS = ("workflow_id", "state", "waiting_for", "on_upstream_failure", "awaited")
PRODUCER_PLAN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("jobs", "SELECT", ()),
    ("jobs", "INSERT", (*INSERTED_COLUMNS, *STEP_COLUMNS)),
    # cancel and wait; a cancel also settles waiting workflow dependents
    (
        "jobs",
        "UPDATE",
        ("state", "finished_at", "cancel_requested", "awaited", "waiting_for", "run_at", "error"),
    ),
    ("workflows", "SELECT", ()),
    ("workflows", "INSERT", ("name",)),
    ("workflows", "UPDATE", ("name",)),  # the row lock of cancel_workflow (FOR UPDATE)
    ("job_dependencies", "SELECT", ()),
    ("job_dependencies", "INSERT", ()),
    ("settings", "SELECT", ()),  # shown by status
)

_NOT_ROLES = frozenset({"public", "none", "current_user", "current_role", "session_user"})


def role_name(value: object, what: str = "role") -> str:
    """A role name as stored in ``pg_roles`` (case-sensitive; quoted when used)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value or len(value.encode("utf-8", "surrogatepass")) > 63:
        raise ValueError(f"{what} {value!r} must be 1 to 63 bytes long")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    if value.lower() in _NOT_ROLES or value.startswith("pg_"):
        raise ValueError(f"{what} {value!r} is reserved; name a role of your own")
    return value


def grant_statements(
    schema: str | QueueTables = DEFAULT_SCHEMA,
    *,
    worker: str | None = None,
    producer: str | None = None,
) -> list[Grant]:
    """The GRANT statements giving ``worker`` and/or ``producer`` what they need on ``schema``."""
    tables = schema if isinstance(schema, QueueTables) else build_tables(schema)
    if worker is None and producer is None:
        raise ValueError("name a worker role, a producer role, or both")
    by_name = {t.name: t for t in tables.metadata.tables.values()}
    statements: list[Grant] = []
    for role, plan in ((worker, WORKER_PLAN), (producer, PRODUCER_PLAN)):
        if role is None:
            continue
        name = role_name(role, "worker role" if plan is WORKER_PLAN else "producer role")
        statements.append(Grant("USAGE", tables.schema, name))
        statements.extend(
            Grant(privilege, by_name[table], name, columns) for table, privilege, columns in plan
        )
        statements.append(Grant("USAGE", jobs_id_sequence(tables), name))  # nextval for ids
        statements.append(Grant("USAGE", workflows_id_sequence(tables), name))
    return statements


def _grant(statements: Seq[Executable]) -> Operation[None]:
    for statement in statements:
        yield statement, None


def grant(
    bind: Any,
    schema: str | QueueTables = DEFAULT_SCHEMA,
    *,
    worker: str | None = None,
    producer: str | None = None,
) -> None:
    """Run the GRANTs on ``bind`` (as the schema's owner), in one transaction on an Engine."""
    run_sync(bind, _grant(grant_statements(schema, worker=worker, producer=producer)))


async def grant_async(
    bind: Any,
    schema: str | QueueTables = DEFAULT_SCHEMA,
    *,
    worker: str | None = None,
    producer: str | None = None,
) -> None:
    """:func:`grant` on an async bind."""
    await run_async(bind, _grant(grant_statements(schema, worker=worker, producer=producer)))


def grant_script(
    schema: str | QueueTables = DEFAULT_SCHEMA,
    *,
    worker: str | None = None,
    producer: str | None = None,
) -> str:
    """The same GRANTs as SQL text, to review or to run with ``psql`` as the owner."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return "".join(
        f"{statement.compile(dialect=dialect)};\n"
        for statement in grant_statements(schema, worker=worker, producer=producer)
    )
