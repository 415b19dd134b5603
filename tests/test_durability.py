"""Durability levels: stored per schema, shown, set through the CLI and the migration doors;
``volatile`` really makes the queue's tables UNLOGGED (``pg_class.relpersistence``) and is refused
while a physical replica streams from the server, unless forced."""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pgq_sa import ConfigurationError, Queue, SchemaOutdated
from pgq_sa import migrations as m
from pgq_sa._cli import cli
from pgq_sa._config import libpq_conninfo
from pgq_sa._ops.drive import run_sync
from pgq_sa._ops.settings import read_durability
from pgq_sa._sql.settings import VOLATILE_TABLES


def _persistence(engine, schema="pgq"):
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.relname, c.relpersistence FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relkind = 'r'"
            ),
            {"schema": schema},
        )
        return dict(rows.all())


def _cli(engine, *args):
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli, ["--database-url", url, *args])


def test_durable_until_set(engine):
    assert m.read_durability(engine) == "durable"
    assert set(_persistence(engine).values()) == {"p"}


def test_levels_are_stored_and_tables_follow(engine):
    job = Queue().enqueue(engine, "kept", {"a": 1})
    m.set_durability(engine, "volatile")
    assert m.read_durability(engine) == "volatile"
    persistence = _persistence(engine)
    assert {persistence[t] for t in VOLATILE_TABLES} == {"u"}
    assert persistence["settings"] == persistence["pgq_sa_version"] == "p"
    assert Queue().get(engine, job).payload == {"a": 1}  # rewritten, not lost
    m.set_durability(engine, "balanced")
    assert m.read_durability(engine) == "balanced"
    assert set(_persistence(engine).values()) == {"p"}
    m.set_durability(engine, "durable")
    assert run_sync(engine, read_durability(Queue().statements)) == "durable"


def test_bad_level_is_refused_before_any_sql(engine):
    with pytest.raises(ValueError, match="durable, balanced, volatile"):
        m.set_durability(engine, "fast")
    with pytest.raises(ValueError, match="durability must be"):
        m.db_upgrade(engine, durability="Volatile")
    assert m.read_durability(engine) == "durable"


def test_through_the_migration_doors(empty_engine):
    m.db_upgrade(empty_engine, schema="jobs_q", durability="volatile")
    assert m.read_durability(empty_engine, schema="jobs_q") == "volatile"
    assert _persistence(empty_engine, "jobs_q")["jobs"] == "u"

    class Op:  # what Alembic hands a revision: get_bind() in its transaction
        def __init__(self, connection):
            self.connection = connection

        def get_bind(self):
            return self.connection

    with empty_engine.begin() as connection:
        m.upgrade(Op(connection), schema="jobs_q", durability="balanced")
    assert m.read_durability(empty_engine, schema="jobs_q") == "balanced"
    assert _persistence(empty_engine, "jobs_q")["jobs"] == "p"


def test_cli_shows_and_sets(engine):
    result = _cli(engine, "db", "durability")
    assert result.exit_code == 0, result.output
    assert "durability durable" in result.output
    result = _cli(engine, "db", "durability", "volatile")
    assert result.exit_code == 0, result.output
    assert "durability volatile" in result.output
    assert _persistence(engine)["jobs"] == "u"
    status = _cli(engine, "status")
    assert "(volatile)" in status.output.splitlines()[0]
    assert json.loads(_cli(engine, "status", "--json").output)["durability"] == "volatile"
    bad = _cli(engine, "db", "durability", "fast")
    assert bad.exit_code == 2
    assert "durable" in bad.output


def test_on_a_schema_older_than_the_settings(empty_engine):
    m.db_upgrade(empty_engine, revision="pgq_sa_0003")
    with pytest.raises(SchemaOutdated, match="pgq-sa db upgrade"):
        m.read_durability(empty_engine)
    result = _cli(empty_engine, "db", "durability")
    assert result.exit_code == 1
    assert "older pgq_sa" in result.output
    assert "Traceback" not in result.output


def test_the_replica_check_runs_on_a_real_server(engine):
    with engine.connect() as connection:
        replicas = connection.execute(Queue().statements.physical_replicas).scalar_one()
    assert replicas == 0  # nothing streams from the test server: volatile is allowed
    m.set_durability(engine, "volatile")


def test_volatile_is_refused_with_a_physical_replica_attached(engine):
    """A physical replication connection (a walsender, as a standby opens) is enough to count;
    staged where the server's pg_hba.conf allows one (the embedded server does)."""
    params = libpq_conninfo(engine.url) | {"replication": "true"}
    try:
        standby = psycopg.connect(**params, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"the server refuses replication connections: {str(error).splitlines()[-1]}")
    try:
        with pytest.raises(ConfigurationError, match=r"physical replica.*--force"):
            m.set_durability(engine, "volatile")
        assert m.read_durability(engine) == "durable"
        assert _persistence(engine)["jobs"] == "p"
        m.set_durability(engine, "volatile", force=True)
        assert _persistence(engine)["jobs"] == "u"
    finally:
        standby.close()
