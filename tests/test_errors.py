"""Failures that explain themselves: the setting problems a user can fix become pgq_sa exceptions
naming the fix, without SQL, the driver's error kept as ``__cause__`` — against a real server:
a database without the queue, a database that does not exist, a port nothing listens on, and a
queue installed by an older pgq_sa."""

from __future__ import annotations

import socket

import anyio
import pytest
from click.testing import CliRunner
from helpers import collect_pg8000_leftovers, driver_url
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgq_sa
from pgq_sa import (
    ConfigurationError,
    DatabaseMissing,
    DatabaseUnreachable,
    PgqError,
    Queue,
    SchemaMissing,
    SchemaOutdated,
)
from pgq_sa._cli import cli
from pgq_sa._errors import explain
from pgq_sa.migrations import db_upgrade, read_durability

SYNC = ["psycopg", "psycopg2", "pg8000"]


@pytest.fixture(autouse=True)
def _pg8000_leftovers(request):
    yield
    if "pg8000" in request.node.name:
        collect_pg8000_leftovers()


ASYNC = ["asyncpg", "psycopg"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _nowhere(server_url):
    """The server's URL with a loopback port nothing listens on."""
    return server_url.set(host="127.0.0.1", port=_free_port()).difference_update_query(["host"])


def _explained(error: PgqError, kind: type[PgqError], *needles: str) -> None:
    assert type(error) is kind
    message = str(error)
    assert all(needle in message for needle in needles), message
    assert "INSERT" not in message, message
    assert "SELECT" not in message, message
    assert len(message) < 400, message
    assert "\n" not in message
    assert isinstance(error.__cause__, Exception)  # the driver's (unwrapped by SQLAlchemy 2.0)


def _sync_enqueue(url, driver, schema="pgq"):
    engine = create_engine(driver_url(url, driver))
    try:
        with Session(engine) as session:
            Queue(schema=schema).enqueue(session, "t", {"a": 1})
    finally:
        engine.dispose()


def _async_enqueue(url, driver, schema="pgq"):
    async def main():
        engine = create_async_engine(driver_url(url, driver))
        try:
            async with AsyncSession(engine) as session:
                await Queue(schema=schema).enqueue_async(session, "t", {"a": 1})
        finally:
            await engine.dispose()

    anyio.run(main, backend="asyncio")


def test_the_exceptions_are_exported_and_related():
    assert issubclass(SchemaMissing, ConfigurationError)
    assert issubclass(SchemaOutdated, ConfigurationError)
    assert issubclass(DatabaseMissing, ConfigurationError)
    assert issubclass(ConfigurationError, PgqError)
    assert issubclass(DatabaseUnreachable, PgqError)
    assert not issubclass(DatabaseUnreachable, ConfigurationError)
    assert issubclass(pgq_sa.migrations.MigrationError, PgqError)
    from pgq_sa._config import ConfigurationError as former_home

    assert former_home is ConfigurationError


@pytest.mark.parametrize("driver", SYNC)
def test_schema_missing(empty_database_url, driver):
    with pytest.raises(SchemaMissing) as caught:
        _sync_enqueue(empty_database_url, driver)
    _explained(caught.value, SchemaMissing, 'schema "pgq"', "pgq-sa db upgrade")


@pytest.mark.parametrize("driver", ASYNC)
def test_schema_missing_async(empty_database_url, driver):
    with pytest.raises(SchemaMissing) as caught:
        _async_enqueue(empty_database_url, driver)
    _explained(caught.value, SchemaMissing, "pgq-sa db upgrade")


def test_schema_missing_names_the_queues_schema(database_url):
    with pytest.raises(SchemaMissing) as caught:
        _sync_enqueue(database_url, "psycopg", schema="myjobs")
    _explained(caught.value, SchemaMissing, 'schema "myjobs"')


@pytest.mark.parametrize("driver", SYNC)
def test_database_missing(server_url, driver):
    url = server_url.set(database="pgq_sa_no_such_database")
    with pytest.raises(DatabaseMissing) as caught:
        _sync_enqueue(url, driver)
    _explained(caught.value, DatabaseMissing, '"pgq_sa_no_such_database"', "createdb")


@pytest.mark.parametrize("driver", ASYNC)
def test_database_missing_async(server_url, driver):
    url = server_url.set(database="pgq_sa_no_such_database")
    with pytest.raises(DatabaseMissing) as caught:
        _async_enqueue(url, driver)
    _explained(caught.value, DatabaseMissing, '"pgq_sa_no_such_database"')


@pytest.mark.parametrize("driver", SYNC)
def test_nothing_listening(server_url, driver):
    with pytest.raises(DatabaseUnreachable) as caught:
        _sync_enqueue(_nowhere(server_url), driver)
    _explained(caught.value, DatabaseUnreachable, "cannot reach the database at 127.0.0.1:")


@pytest.mark.parametrize("driver", ASYNC)
def test_nothing_listening_async(server_url, driver):
    with pytest.raises(DatabaseUnreachable) as caught:
        _async_enqueue(_nowhere(server_url), driver)
    _explained(caught.value, DatabaseUnreachable, "is the server running")


@pytest.fixture
def old_schema_engine(empty_engine):
    db_upgrade(empty_engine, revision="pgq_sa_0003")
    return empty_engine


def test_schema_older_than_this_pgq_sa(old_schema_engine):
    queue = Queue()
    # the Python API explains it (reading a job needs step 0004's jobs.workflow_id), no SQL dump
    with pytest.raises(SchemaOutdated, match="pgq-sa db upgrade") as through_api:
        queue.get(old_schema_engine, 1)
    assert "SELECT" not in str(through_api.value)
    # what needs a later step is explained: a column (step 0004 added jobs.workflow_id) ...
    with pytest.raises(DBAPIError) as caught, old_schema_engine.connect() as connection:
        connection.execute(select(queue.tables.jobs))
    explained = explain(caught.value, schema="pgq")
    assert isinstance(explained, SchemaOutdated)
    assert "'workflow_id'" in str(explained)
    assert "pgq-sa db upgrade" in str(explained)
    # ... and a table (step 0004 added settings), through the API that reads it
    with pytest.raises(SchemaOutdated) as outdated:
        read_durability(old_schema_engine)
    _explained(outdated.value, SchemaOutdated, "older pgq_sa", "'settings'")


def test_other_database_errors_are_left_alone(engine):
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        connection.execute(text("INSERT INTO pgq.queues (name) VALUES ('a'), ('a')"))
    assert explain(caught.value, schema="pgq") is None
    assert explain(TimeoutError("job 1 did not finish")) is None
    assert explain(ValueError("x")) is None


def test_cli_says_the_same(server_url, empty_database_url):
    runner = CliRunner()
    cases = [
        (server_url.set(database="pgq_sa_no_such_database"), "createdb"),
        (empty_database_url, "pgq-sa db upgrade"),
        (_nowhere(server_url), "cannot reach the database"),
    ]
    for url, needle in cases:
        rendered = url.render_as_string(hide_password=False)
        result = runner.invoke(cli, ["--database-url", rendered, "jobs", "show", "1"])
        assert result.exit_code == 1, result.output
        assert needle in result.output
        assert "Traceback" not in result.output
        assert len(result.output.splitlines()) == 1
