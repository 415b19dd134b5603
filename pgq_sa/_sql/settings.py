"""Per-schema settings (the ``settings`` table) and the durability level's storage: which tables
are UNLOGGED, and whether the server streams its WAL to a physical replica."""

from __future__ import annotations

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables, validate_schema_name

# The tables a ``volatile`` schema keeps UNLOGGED: everything about jobs and workers. The settings
# (which say the schema is volatile) and the version marker stay logged, so they survive a crash
# that empties the others.
VOLATILE_TABLES = (
    "jobs",
    "workers",
    "queues",
    "task_limits",
    "schedules",
    "workflows",
    "job_dependencies",
)


def read_setting(tables: QueueTables) -> Executable:
    settings = tables.settings
    return select(settings.c.value).where(settings.c.name == bindparam("name"))


def write_setting(tables: QueueTables) -> Executable:
    settings = tables.settings
    statement = insert(settings).values(name=bindparam("name"), value=bindparam("value"))
    return statement.on_conflict_do_update(
        index_elements=[settings.c.name],
        set_={"value": statement.excluded.value, "updated_at": func.now()},
    )


def physical_replicas() -> Executable:
    """How many physical replicas stream from this server (logical walsenders, which belong to a
    database, are not counted: UNLOGGED tables are never published to them anyway)."""
    return text(
        "SELECT count(*) FROM pg_stat_replication AS r "
        "JOIN pg_stat_activity AS a ON a.pid = r.pid WHERE a.datname IS NULL"
    )


def table_persistence(tables: QueueTables) -> Executable:
    """Each table of the schema and its ``relpersistence`` (``p`` logged, ``u`` unlogged)."""
    return text(
        "SELECT c.relname, c.relpersistence FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') ORDER BY c.relname"
    ).bindparams(schema=tables.schema)


def set_persistence(tables: QueueTables, table: str, *, logged: bool) -> Executable:
    """``ALTER TABLE ... SET LOGGED|UNLOGGED`` (a no-op when it already is; else a rewrite
    under an exclusive lock)."""
    if table not in VOLATILE_TABLES:
        raise ValueError(f"{table!r} is not one of the queue's tables that can be UNLOGGED")
    schema = validate_schema_name(tables.schema)
    return text(f'ALTER TABLE "{schema}".{table} SET {"LOGGED" if logged else "UNLOGGED"}')
