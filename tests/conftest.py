"""Test fixtures: a real PostgreSQL server, a migrated template, and a fresh database per test.

The server is ``PGQ_SA_TEST_DATABASE_URL`` (one the tests may create databases on) or, when that
is unset, an embedded PostgreSQL started in a temporary folder for this run. Each test that needs
a database gets its own, cloned from a template migrated once per run.
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

from pgq_sa._config import make_engine, sync_url
from pgq_sa.migrations import db_upgrade


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """An admin URL of the PostgreSQL server under test."""
    configured = os.environ.get("PGQ_SA_TEST_DATABASE_URL")
    if configured:
        yield sync_url(configured)
        return
    from pgq_sa import _devdb as devdb

    folder = Path(tempfile.mkdtemp(prefix="pgq_sa_test_pg_"))
    server = devdb.start(folder / "data", keep_running=False)
    try:
        yield sync_url(server.url)
    finally:
        server.handle.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_engine(server_url: URL) -> Iterator[Engine]:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _create_database(admin: Engine, name: str, template: str | None = None) -> None:
    with admin.connect() as connection:
        clause = f' TEMPLATE "{template}"' if template else ""
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')


def _drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_database(admin_engine: Engine, server_url: URL) -> Iterator[str]:
    """A database with the default ``pgq`` schema migrated to head, used as a template."""
    name = f"pgq_sa_template_{os.getpid()}"
    _drop_database(admin_engine, name)
    _create_database(admin_engine, name)
    engine = make_engine(server_url.set(database=name))
    try:
        db_upgrade(engine)
    finally:
        engine.dispose()
    yield name
    _drop_database(admin_engine, name)


def _fresh(admin_engine: Engine, server_url: URL, template: str | None) -> Iterator[URL]:
    name = f"pgq_sa_test_{uuid.uuid4().hex[:12]}"
    _create_database(admin_engine, name, template)
    try:
        yield server_url.set(database=name)
    finally:
        _drop_database(admin_engine, name)


@pytest.fixture
def database_url(admin_engine: Engine, server_url: URL, template_database: str) -> Iterator[URL]:
    """A fresh database of its own for this test, with the queue installed in schema ``pgq``."""
    yield from _fresh(admin_engine, server_url, template_database)


@pytest.fixture
def empty_database_url(admin_engine: Engine, server_url: URL) -> Iterator[URL]:
    """A fresh, empty database of its own for this test (nothing installed)."""
    yield from _fresh(admin_engine, server_url, None)


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def empty_engine(empty_database_url: URL) -> Iterator[Engine]:
    engine = make_engine(empty_database_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
