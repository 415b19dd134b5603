"""pytest fixtures for applications that use pgq_sa: a fresh, migrated database per test.

Registered through the ``pytest11`` entry point, so installing pgq_sa is enough. The server is
``PGQ_SA_TEST_DATABASE_URL`` (a server the tests may create and drop databases on) or, when that
is unset, an embedded PostgreSQL (extra ``embedded``) started in a temporary folder for the test
session. The queue's schema is migrated once into a template database; each test that asks for
``pgq_database_url`` or ``pgq_engine`` gets its own copy, dropped afterwards. Every fixture name
starts with ``pgq_`` so none collides with an application's own fixtures. Override
``pgq_schema`` (session scope) when your ``Queue`` uses another schema.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from pgq_sa._config import ConfigurationError, make_engine, sync_url
from pgq_sa._schema import DEFAULT_SCHEMA
from pgq_sa.migrations import db_upgrade

SERVER_VARIABLE = "PGQ_SA_TEST_DATABASE_URL"


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pgq_server_url() -> Iterator[str]:
    """An admin URL of the PostgreSQL server the test databases are created on."""
    configured = os.environ.get(SERVER_VARIABLE)
    if configured:
        yield _render(sync_url(configured))
        return
    from pgq_sa import _devdb as devdb

    folder = Path(tempfile.mkdtemp(prefix="pgq_sa_pytest_"))
    try:
        server = devdb.start(folder / "data", keep_running=False)
    except ConfigurationError as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"pgq_sa: set {SERVER_VARIABLE} to a PostgreSQL server, or {error}")
    try:
        yield _render(sync_url(server.url))
    finally:
        server.handle.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pgq_schema() -> str:
    """The schema the queue is installed in; override it to match ``Queue(schema=...)``."""
    return DEFAULT_SCHEMA


def _create_database(admin: Engine, name: str, template: str | None = None) -> None:
    # Both names are made here from a uuid, never taken from user input.
    clause = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')


def _drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pgq_admin_engine(pgq_server_url: str) -> Iterator[Engine]:
    """An autocommit engine on the server's admin database (creates and drops databases)."""
    engine = create_engine(sync_url(pgq_server_url), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pgq_template_database(pgq_admin_engine: Engine, pgq_schema: str) -> Iterator[str]:
    """The name of a database with the queue migrated to head, copied for every test."""
    name = f"pgq_sa_template_{uuid.uuid4().hex[:12]}"
    _create_database(pgq_admin_engine, name)
    try:
        engine = make_engine(pgq_admin_engine.url.set(database=name))
        try:
            db_upgrade(engine, schema=pgq_schema)
        finally:
            engine.dispose()
        yield name
    finally:
        _drop_database(pgq_admin_engine, name)


@pytest.fixture
def pgq_database_url(pgq_admin_engine: Engine, pgq_template_database: str) -> Iterator[str]:
    """The URL (``postgresql+psycopg://``) of a fresh database of this test's own, with the
    queue installed; dropped after the test. For an async engine pass it to
    ``pgq_sa._config.make_async_engine``."""
    name = f"pgq_sa_test_{uuid.uuid4().hex[:12]}"
    _create_database(pgq_admin_engine, name, pgq_template_database)
    try:
        yield _render(pgq_admin_engine.url.set(database=name))
    finally:
        _drop_database(pgq_admin_engine, name)


@pytest.fixture
def pgq_engine(pgq_database_url: str) -> Iterator[Engine]:
    """A sync SQLAlchemy Engine (psycopg) on this test's database."""
    engine = make_engine(pgq_database_url)
    yield engine
    engine.dispose()
