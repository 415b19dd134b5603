"""Scratch databases and schemas: created for one run, dropped at its end.

A run creates ``pgq_sa_bench_<random>`` on the server of ``--database-url`` and drops it (``WITH
(FORCE)``) when it ends, however it ends. Inside it every measurement installs the queue in a
schema of its own with :func:`pgq_sa.migrations.db_upgrade` and drops it afterwards, so no
measurement sees another's rows.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from pgq_sa._config import make_engine, parse_url, sync_url
from pgq_sa.migrations import db_upgrade, set_durability

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
URL_VARIABLE = "PGQ_SA_DATABASE_URL"
PREFIX = "pgq_sa_bench_"


def default_server_url() -> str:
    """``PGQ_SA_DATABASE_URL`` if set, else the local server."""
    return os.environ.get(URL_VARIABLE) or LOCAL_SERVER


def libpq_dsn(url: URL) -> str:
    """``url`` as a plain ``postgresql://`` DSN for asyncpg and psycopg (PgQueuer's drivers)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Scratch:
    """The scratch database of one run: its URL and a sync engine on it."""

    url: URL
    engine: Engine

    @property
    def dsn(self) -> str:
        return libpq_dsn(self.url)


@contextlib.contextmanager
def scratch_database(server_url: str | URL, *, prefix: str = PREFIX) -> Iterator[Scratch]:
    """Create a database named ``<prefix><random>`` on the server; drop it on the way out."""
    admin_url = sync_url(parse_url(server_url))
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = admin_url.set(database=name)
        engine = make_engine(url)
        try:
            yield Scratch(url, engine)
        finally:
            engine.dispose()
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def install(engine: Engine, schema: str, durability: str = "durable") -> None:
    """Install the queue in ``schema`` at a durability level, replacing whatever was there."""
    drop(engine, schema)
    db_upgrade(engine, schema=schema)
    if durability != "durable":
        set_durability(engine, durability, schema=schema, force=True)


def drop(engine: Engine, schema: str) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def queue_schema(engine: Engine, schema: str, durability: str = "durable") -> Iterator[str]:
    """A freshly installed queue schema for one measurement, dropped afterwards."""
    install(engine, schema, durability)
    try:
        yield schema
    finally:
        drop(engine, schema)


def execute(engine: Engine, sql: str) -> None:
    """Run one statement in autocommit (ANALYZE, VACUUM, CHECKPOINT, DDL)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(sql)


def analyze(engine: Engine, table: str) -> None:
    """``ANALYZE table`` so the planner sees the rows just enqueued."""
    execute(engine, f"ANALYZE {table}")


def settle(engine: Engine) -> None:
    """Flush dirty buffers (``CHECKPOINT``) before a timed section, when the role may.

    No server setting changes; it only keeps a checkpoint caused by the previous measurement's
    writes from landing inside the next one's clock.
    """
    with contextlib.suppress(DBAPIError):
        execute(engine, "CHECKPOINT")


def warm(engine: Engine, connections: int = 3) -> None:
    """Open ``connections`` pooled connections at once, so the clock never pays for connecting."""
    with contextlib.ExitStack() as stack:
        for _ in range(connections):
            stack.enter_context(engine.connect()).exec_driver_sql("SELECT 1")


def state_counts(engine: Engine, schema: str) -> dict[str, int]:
    """How many jobs of ``schema`` are in each state."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(f'SELECT state::text, count(*) FROM "{schema}".jobs GROUP BY 1')
        ).all()
    return {state: int(count) for state, count in rows}


def expect_succeeded(engine: Engine, schema: str, succeeded: int) -> None:
    """Raise unless exactly ``succeeded`` jobs exist in ``schema`` and all of them succeeded."""
    counts = state_counts(engine, schema)
    if counts != {"succeeded": succeeded}:
        raise RuntimeError(f"expected {succeeded:,} succeeded jobs in {schema}, found {counts}")
