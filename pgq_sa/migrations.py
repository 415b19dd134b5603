"""Installing and upgrading the queue's schema: three doors, one marker.

The doors:

* standalone: ``pgq-sa db upgrade`` (:func:`db_upgrade` and friends) runs Alembic with the revisions
  shipped in this package and keeps its version table inside the queue's schema;
* the user's Alembic, own branch: add :func:`versions_path` to ``version_locations`` and run
  ``alembic upgrade pgq_sa@head``;
* the user's Alembic, own chain: call :func:`upgrade` / :func:`downgrade` with ``op`` inside one of
  the user's revisions.

The marker is the table ``<schema>.pgq_sa_version`` (Alembic's own version-table layout). Every
step of :mod:`pgq_sa._steps` consults it before running and records itself in it after, so
moving from one door to another never applies a step twice. Steps run under a transaction-level
advisory lock, so two processes migrating at once apply each step once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, text

from pgq_sa._errors import MigrationError, explained
from pgq_sa._ops import settings
from pgq_sa._ops.drive import run_sync
from pgq_sa._ops.settings import Durability, durability_level
from pgq_sa._schema import DEFAULT_SCHEMA, VERSION_TABLE, build_tables, validate_schema_name
from pgq_sa._sql import Statements, catalog
from pgq_sa._steps import STEPS, Step

__all__ = [
    "BRANCH_LABEL",
    "MigrationError",
    "db_check",
    "db_current",
    "db_downgrade",
    "db_upgrade",
    "downgrade",
    "head_revision",
    "include_name",
    "queue_schemas",
    "read_durability",
    "set_durability",
    "upgrade",
    "versions_path",
]

log = logging.getLogger("pgq_sa.migrations")

BRANCH_LABEL = "pgq_sa"
_SCHEMA_ATTRIBUTE = "pgq_sa_schema"
_REVISIONS = [step.revision for step in STEPS]


def head_revision() -> str:
    """The newest revision this version of pgq_sa knows."""
    return _REVISIONS[-1]


def _alembic_dir() -> Path:
    """The Alembic environment folder: inside the wheel, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "versions").is_dir():
            return candidate
    raise MigrationError(f"pgq_sa's Alembic revisions are missing (looked beside {package})")


def versions_path() -> str:
    """The folder holding pgq_sa's revisions, to add to a project's ``version_locations``."""
    return str(_alembic_dir() / "versions")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """An Alembic ``include_name`` hook that hides every pgq_sa schema from autogenerate.

    Needed only by projects running autogenerate with ``include_schemas=True``; by default
    Alembic never looks outside the default schema, where pgq_sa puts nothing. A queue's schema
    is recognised in the database Alembic is connected to (a schema holding a ``pgq_sa_version``
    table, whatever its name), and by name: ``pgq`` and ``$PGQ_SA_SCHEMA``.
    """
    if type_ == "schema":
        return name not in queue_schemas()
    return True


def queue_schemas(connection: Connection | None = None) -> frozenset[str]:
    """The schemas holding a pgq_sa queue: those of ``connection``'s database (by default the
    running Alembic environment's) with a ``pgq_sa_version`` table, plus ``pgq`` and
    ``$PGQ_SA_SCHEMA``."""
    names = {DEFAULT_SCHEMA, os.environ.get("PGQ_SA_SCHEMA") or DEFAULT_SCHEMA}
    if connection is None:
        connection = _alembic_connection()
    if connection is not None:
        names.update(connection.execute(catalog.queue_schemas()).scalars())
    return frozenset(names)


def _alembic_connection() -> Connection | None:
    """The connection of the Alembic environment running now, if any."""
    from alembic import context

    try:
        bind = context.get_bind()
    except (NameError, AttributeError):  # no Alembic environment is running (a plain import)
        return None
    return bind if isinstance(bind, Connection) else None


# --- the marker ------------------------------------------------------------------------------


def _read_marker(connection: Connection, schema: str) -> str | None:
    exists = connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": f'"{schema}".{VERSION_TABLE}'},
    ).scalar_one()
    if not exists:
        return None
    rows = connection.execute(text(f'SELECT version_num FROM "{schema}".{VERSION_TABLE}')).all()
    if len(rows) > 1:
        raise MigrationError(f'"{schema}".{VERSION_TABLE} holds several revisions: {rows}')
    return rows[0][0] if rows else None


def _position(revision: str | None) -> int:
    """Index of ``revision`` in the chain; -1 for none applied."""
    if revision is None:
        return -1
    try:
        return _REVISIONS.index(revision)
    except ValueError:
        raise MigrationError(
            f"the queue schema is at revision {revision!r}, which this pgq_sa does not know; "
            "install the pgq_sa version that created it (or newer)"
        ) from None


def _write_marker(connection: Connection, schema: str, revision: str | None) -> None:
    connection.execute(
        text(
            f'CREATE TABLE IF NOT EXISTS "{schema}".{VERSION_TABLE} ('
            "version_num varchar(32) NOT NULL, "
            f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(text(f'DELETE FROM "{schema}".{VERSION_TABLE}'))
    if revision is not None:
        connection.execute(
            text(f'INSERT INTO "{schema}".{VERSION_TABLE} (version_num) VALUES (:rev)'),
            {"rev": revision},
        )


def _lock(connection: Connection, schema: str) -> None:
    connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"pgq_sa.migrate.{schema}"}
    )


def _run(connection: Connection, statements: list[str]) -> None:
    for statement in statements:
        connection.exec_driver_sql(statement)


# --- applying one step -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Applied:
    revision: str
    direction: Literal["up", "down"]
    skipped: bool


def _step_up(
    connection: Connection, schema: str, step: Step, *, record_marker: bool = True
) -> _Applied:
    _lock(connection, schema)
    connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    current = _position(_read_marker(connection, schema))
    target = _position(step.revision)
    if current >= target:
        log.info("pgq_sa %s already applied to schema %s; skipping", step.revision, schema)
        return _Applied(step.revision, "up", skipped=True)
    if current != target - 1:
        raise MigrationError(
            f"cannot apply {step.revision} to schema {schema!r}: it is at "
            f"{_REVISIONS[current] if current >= 0 else 'base'}, apply the steps before it first"
        )
    _run(connection, step.up(schema))
    if record_marker:
        _write_marker(connection, schema, step.revision)
    log.info("pgq_sa %s applied to schema %s (%s)", step.revision, schema, step.description)
    return _Applied(step.revision, "up", skipped=False)


def _step_down(
    connection: Connection, schema: str, step: Step, *, record_marker: bool = True
) -> _Applied:
    _lock(connection, schema)
    current = _position(_read_marker(connection, schema))
    target = _position(step.revision)
    if current < target:
        log.info("pgq_sa %s is not applied to schema %s; skipping", step.revision, schema)
        return _Applied(step.revision, "down", skipped=True)
    if current > target:
        raise MigrationError(
            f"cannot revert {step.revision} in schema {schema!r}: it is at {_REVISIONS[current]}, "
            "revert the later steps first (for example with `pgq-sa db downgrade`)"
        )
    _run(connection, step.down(schema))
    if record_marker:
        _write_marker(connection, schema, _REVISIONS[target - 1] if target > 0 else None)
    log.info("pgq_sa %s reverted in schema %s", step.revision, schema)
    return _Applied(step.revision, "down", skipped=False)


def _step(revision: str) -> Step:
    return STEPS[_position(revision)]


# --- door 2: a revision file running inside some Alembic environment ---------------------------


def _schema_from_alembic_context() -> str:
    from alembic import context

    config = context.config
    schema = (
        config.attributes.get(_SCHEMA_ATTRIBUTE)
        or context.get_x_argument(as_dictionary=True).get(_SCHEMA_ATTRIBUTE)
        or config.get_main_option(_SCHEMA_ATTRIBUTE)
        or os.environ.get("PGQ_SA_SCHEMA")
        or DEFAULT_SCHEMA
    )
    return validate_schema_name(schema)


def _alembic_keeps_marker(op: Any, schema: str) -> bool:
    """True when the running Alembic environment uses the marker as its own version table."""
    migration_context = op.get_context()
    return bool(
        migration_context.version_table == VERSION_TABLE
        and migration_context.version_table_schema == schema
    )


def run_revision(op: Any, revision: str, direction: Literal["up", "down"]) -> None:
    """Body of each shipped revision file: apply or revert one step unless the marker says not."""
    schema = _schema_from_alembic_context()
    connection = op.get_bind()
    record = not _alembic_keeps_marker(op, schema)
    if direction == "up":
        _step_up(connection, schema, _step(revision), record_marker=record)
    else:
        _step_down(connection, schema, _step(revision), record_marker=record)


# --- door 3: inside one of the user's own revisions --------------------------------------------


def upgrade(
    op: Any,
    *,
    schema: str = DEFAULT_SCHEMA,
    revision: str | None = None,
    durability: str | None = None,
) -> None:
    """Bring ``schema`` up to ``revision`` (default: the newest) from inside a user's revision;
    with ``durability``, set that level too (see :func:`set_durability`)."""
    validate_schema_name(schema)
    level = None if durability is None else durability_level(durability)
    connection = op.get_bind()
    stop = _position(revision or head_revision())
    for step in STEPS[: stop + 1]:
        _step_up(connection, schema, step)
    if level is not None:
        _set_durability(connection, schema, level, force=False)


def downgrade(op: Any, *, schema: str = DEFAULT_SCHEMA, revision: str | None = None) -> None:
    """Revert ``schema`` to ``revision`` (default: nothing applied) inside a user's revision."""
    validate_schema_name(schema)
    connection = op.get_bind()
    keep = _position(revision)
    for step in reversed(STEPS[keep + 1 :]):
        _step_down(connection, schema, step)


# --- door 1: pgq-sa db ... ---------------------------------------------------------------------


def _config(connection: Connection, schema: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_alembic_dir()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", versions_path())
    config.attributes["connection"] = connection
    config.attributes[_SCHEMA_ATTRIBUTE] = schema
    return config


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        if bind.in_transaction():
            yield bind
        else:
            with bind.begin():
                yield bind
        return
    with bind.begin() as connection:
        yield connection


def _alembic_target(revision: str) -> str:
    if revision in {"head", "heads"}:
        return f"{BRANCH_LABEL}@head"
    if revision == "base":
        return "base"
    if revision.lstrip("+-").isdigit():
        return f"{BRANCH_LABEL}@{revision}"
    _position(revision)
    return revision


def db_upgrade(
    bind: Engine | Connection,
    *,
    schema: str = DEFAULT_SCHEMA,
    revision: str = "head",
    durability: str | None = None,
) -> None:
    """Apply the revisions up to ``revision`` (``head``, an id, or ``+N``) to ``schema``; with
    ``durability``, set that level in the same transaction (see :func:`set_durability`)."""
    from alembic import command

    validate_schema_name(schema)
    level = None if durability is None else durability_level(durability)
    target = _alembic_target(revision)
    with _transaction(bind) as connection:
        _lock(connection, schema)
        connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        _position(_read_marker(connection, schema))
        command.upgrade(_config(connection, schema), target)
        if level is not None:
            _set_durability(connection, schema, level, force=False)


# --- durability levels -------------------------------------------------------------------------


def _set_durability(connection: Connection, schema: str, level: Durability, *, force: bool) -> None:
    statements = Statements.build(build_tables(schema))
    with explained(schema=schema, url=connection.engine.url):
        run_sync(connection, settings.set_durability(statements, level, force=force))


def set_durability(
    bind: Engine | Connection, level: str, *, schema: str = DEFAULT_SCHEMA, force: bool = False
) -> None:
    """Set ``schema``'s durability level: ``durable``, ``balanced`` or ``volatile`` (UNLOGGED
    tables; refused while the server streams to a physical replica, unless ``force``). One
    transaction: a refusal changes nothing. Workers read the level when they start."""
    validate_schema_name(schema)
    chosen = durability_level(level)
    with _transaction(bind) as connection:
        _lock(connection, schema)
        _set_durability(connection, schema, chosen, force=force)


def read_durability(bind: Engine | Connection, *, schema: str = DEFAULT_SCHEMA) -> Durability:
    """``schema``'s durability level (``durable`` until set)."""
    validate_schema_name(schema)
    statements = Statements.build(build_tables(schema))
    with _transaction(bind) as connection, explained(schema=schema, url=connection.engine.url):
        return run_sync(connection, settings.read_durability(statements))


def db_downgrade(bind: Engine | Connection, *, schema: str = DEFAULT_SCHEMA, revision: str) -> None:
    """Revert ``schema`` down to ``revision`` (an id, ``base`` or ``-N``)."""
    from alembic import command

    validate_schema_name(schema)
    target = _alembic_target(revision)
    with _transaction(bind) as connection:
        _lock(connection, schema)
        if _position(_read_marker(connection, schema)) < 0:
            return
        command.downgrade(_config(connection, schema), target)


def db_current(bind: Engine | Connection, *, schema: str = DEFAULT_SCHEMA) -> str | None:
    """The revision ``schema`` is at, or None when pgq_sa was never installed there."""
    validate_schema_name(schema)
    with _transaction(bind) as connection:
        return _read_marker(connection, schema)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`db_check`: the revision found and any differences from the metadata."""

    current: str | None
    head: str
    differences: Collection[Any]

    @property
    def ok(self) -> bool:
        return self.current == self.head and not self.differences


def compare_with_metadata(connection: Connection, schema: str) -> list[Any]:
    """Alembic's autogenerate differences between the database and the queue's metadata."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def only_this_schema(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name == schema
        if type_ == "table":
            return name != VERSION_TABLE
        return True

    context = MigrationContext.configure(
        connection,
        opts={"include_schemas": True, "include_name": only_this_schema, "compare_type": True},
    )
    return list(compare_metadata(context, build_tables(schema).metadata))


def db_check(bind: Engine | Connection, *, schema: str = DEFAULT_SCHEMA) -> CheckResult:
    """Is ``schema`` at the newest revision, and does it match the metadata exactly?"""
    validate_schema_name(schema)
    with _transaction(bind) as connection:
        current = _read_marker(connection, schema)
        _position(current)
        differences = compare_with_metadata(connection, schema) if current else []
    return CheckResult(current=current, head=head_revision(), differences=differences)


def run_standalone_environment() -> None:
    """The body of the shipped ``env.py``: migrate with the marker as Alembic's version table."""
    from alembic import context

    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise MigrationError(
            "pgq_sa's own Alembic environment runs through `pgq-sa db ...` or "
            "pgq_sa.migrations.db_upgrade(); to use your own Alembic, add "
            "pgq_sa.migrations.versions_path() to your version_locations instead"
        )
    schema = validate_schema_name(config.attributes[_SCHEMA_ATTRIBUTE])
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        target_metadata=build_tables(schema).metadata,
        include_schemas=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
