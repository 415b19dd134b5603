"""Migrations: three doors, one marker; round trips; the database matches the metadata."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, Text, inspect, text

from pgq_sa import Queue
from pgq_sa import migrations as m
from pgq_sa._schema import VERSION_TABLE

HEAD = m.head_revision()


def _tables(engine, schema="pgq"):
    return sorted(inspect(engine).get_table_names(schema=schema))


def _user_version(engine):
    with engine.connect() as connection:
        return (
            connection.execute(text("SELECT version_num FROM public.alembic_version"))
            .scalars()
            .all()
        )


def _marker(engine, schema="pgq"):
    return m.db_current(engine, schema=schema)


def test_standalone_upgrade_downgrade_upgrade(empty_engine):
    assert _marker(empty_engine) is None
    m.db_upgrade(empty_engine)
    assert _marker(empty_engine) == HEAD
    assert {"jobs", "workers", "queues", "schedules", "task_limits", VERSION_TABLE} <= set(
        _tables(empty_engine)
    )
    m.db_upgrade(empty_engine)  # idempotent
    m.db_downgrade(empty_engine, revision="base")
    assert _marker(empty_engine) is None
    assert _tables(empty_engine) == [VERSION_TABLE]
    m.db_upgrade(empty_engine)
    assert _marker(empty_engine) == HEAD
    assert m.db_check(empty_engine).ok


def test_migrated_database_matches_the_metadata(empty_engine):
    m.db_upgrade(empty_engine, schema="jobs_q")
    with empty_engine.connect() as connection:
        assert m.compare_with_metadata(connection, "jobs_q") == []
    result = m.db_check(empty_engine, schema="jobs_q")
    assert result.ok, result.differences


def test_check_reports_drift(empty_engine):
    m.db_upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("DROP INDEX pgq.jobs_claim_idx"))
    result = m.db_check(empty_engine)
    assert not result.ok
    assert any("jobs_claim_idx" in str(d) for d in result.differences)


def test_notify_and_rules_triggers_are_installed(empty_engine):
    m.db_upgrade(empty_engine)
    with empty_engine.connect() as connection:
        triggers = (
            connection.execute(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'pgq.jobs'::regclass "
                    "AND NOT tgisinternal"
                )
            )
            .scalars()
            .all()
        )
    assert sorted(triggers) == ["jobs_check_rules", "jobs_notify_inserted"]


def _user_project(tmp_path: Path, *, own_revision: bool) -> Path:
    """A user's Alembic project with one table of their own (and optionally the queue in it)."""
    project = tmp_path / "migrations"
    versions = project / "versions"
    versions.mkdir(parents=True)
    (project / "env.py").write_text(
        textwrap.dedent("""
        from alembic import context
        from sqlalchemy import Column, Integer, MetaData, Table

        metadata = MetaData()
        Table("accounts", metadata, Column("id", Integer, primary_key=True))

        context.configure(
            connection=context.config.attributes["connection"], target_metadata=metadata
        )
        with context.begin_transaction():
            context.run_migrations()
    """)
    )
    (project / "script.py.mako").write_text("")
    (versions / "u001_accounts.py").write_text(
        textwrap.dedent("""
        from alembic import op
        import sqlalchemy as sa

        revision = "u001"
        down_revision = None
        branch_labels = ("app",)
        depends_on = None

        def upgrade():
            op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True))

        def downgrade():
            op.drop_table("accounts")
    """)
    )
    if own_revision:
        (versions / "u002_queue.py").write_text(
            textwrap.dedent("""
            from alembic import op
            import pgq_sa.migrations

            revision = "u002"
            down_revision = "u001"
            branch_labels = None
            depends_on = None

            def upgrade():
                pgq_sa.migrations.upgrade(op)

            def downgrade():
                pgq_sa.migrations.downgrade(op)
        """)
        )
    return project


def _user_config(project: Path, connection, *, with_pgq_branch: bool) -> Config:
    config = Config()
    config.set_main_option("script_location", str(project))
    config.set_main_option("path_separator", "os")
    locations = [str(project / "versions")]
    if with_pgq_branch:
        locations.append(m.versions_path())
    config.set_main_option("version_locations", os.pathsep.join(locations))
    config.attributes["connection"] = connection
    return config


def test_door_user_branch(empty_engine, tmp_path):
    project = _user_project(tmp_path, own_revision=False)
    with empty_engine.begin() as connection:
        config = _user_config(project, connection, with_pgq_branch=True)
        command.upgrade(config, "heads")
    assert set(_user_version(empty_engine)) == {"u001", HEAD}
    assert _marker(empty_engine) == HEAD
    assert m.db_check(empty_engine).ok
    with empty_engine.begin() as connection:
        command.downgrade(_user_config(project, connection, with_pgq_branch=True), "pgq_sa@base")
    assert _marker(empty_engine) is None
    assert "jobs" not in _tables(empty_engine)
    assert _user_version(empty_engine) == ["u001"]


def test_door_user_chain(empty_engine, tmp_path):
    project = _user_project(tmp_path, own_revision=True)
    with empty_engine.begin() as connection:
        command.upgrade(_user_config(project, connection, with_pgq_branch=False), "head")
    assert _user_version(empty_engine) == ["u002"]
    assert _marker(empty_engine) == HEAD
    assert m.db_check(empty_engine).ok
    Queue().enqueue(empty_engine, "works")
    with empty_engine.begin() as connection:
        command.downgrade(_user_config(project, connection, with_pgq_branch=False), "u001")
    assert _marker(empty_engine) is None
    assert "jobs" not in _tables(empty_engine)


def test_switching_doors_never_applies_a_step_twice(empty_engine, tmp_path):
    # door 3 installs, door 1 and door 2 then find the work done and only record it
    project = _user_project(tmp_path, own_revision=True)
    with empty_engine.begin() as connection:
        command.upgrade(_user_config(project, connection, with_pgq_branch=False), "head")
    Queue().enqueue(empty_engine, "survivor")
    m.db_upgrade(empty_engine)
    other = _user_project(tmp_path / "other", own_revision=False)
    with empty_engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("DROP TABLE accounts"))
        command.upgrade(_user_config(other, connection, with_pgq_branch=True), "heads")
    assert _marker(empty_engine) == HEAD
    with empty_engine.connect() as connection:
        tasks = connection.execute(text("SELECT task FROM pgq.jobs")).scalars().all()
    assert tasks == ["survivor"]  # nothing was recreated


def test_door_one_after_user_branch_is_a_no_op(empty_engine, tmp_path):
    project = _user_project(tmp_path, own_revision=False)
    with empty_engine.begin() as connection:
        command.upgrade(_user_config(project, connection, with_pgq_branch=True), "pgq_sa@head")
    Queue().enqueue(empty_engine, "kept")
    m.db_upgrade(empty_engine)
    assert _marker(empty_engine) == HEAD
    with empty_engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pgq.jobs")).scalar_one() == 1


def test_user_autogenerate_proposes_nothing_about_the_queue(engine):
    user_metadata = MetaData()
    Table("accounts", user_metadata, Column("id", Integer, primary_key=True), Column("name", Text))
    user_metadata.create_all(engine)
    with engine.connect() as connection:
        default = compare_metadata(MigrationContext.configure(connection), user_metadata)
        assert default == []
        with_schemas = compare_metadata(
            MigrationContext.configure(
                connection,
                opts={"include_schemas": True, "include_name": m.include_name},
            ),
            user_metadata,
        )
        assert with_schemas == []


def test_unknown_marker_revision_is_a_clear_error(empty_engine):
    m.db_upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text(f"UPDATE pgq.{VERSION_TABLE} SET version_num = 'pgq_sa_9999'"))
    for attempt in (
        lambda: m.db_upgrade(empty_engine),
        lambda: m.db_downgrade(empty_engine, revision="base"),
        lambda: m.db_check(empty_engine),
    ):
        with pytest.raises(m.MigrationError, match="does not know"):
            attempt()
    assert m.db_current(empty_engine) == "pgq_sa_9999"


def test_concurrent_upgrades_apply_once(empty_database_url):
    import threading

    from pgq_sa._config import make_engine

    errors: list[BaseException] = []

    def upgrade() -> None:
        engine = make_engine(empty_database_url)
        try:
            m.db_upgrade(engine)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(empty_database_url)
    assert m.db_check(engine).ok
    engine.dispose()


@pytest.mark.slow
def test_wheel_install_migrates(empty_database_url, tmp_path):
    root = Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(root)],
        check=True,
    )
    (wheel,) = wheels.glob("pgq_sa-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    assert (site / "pgq_sa" / "_alembic" / "versions").is_dir()
    environment = {**os.environ, "PYTHONPATH": str(site)}
    url = empty_database_url.render_as_string(hide_password=False)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pgq_sa, pgq_sa.migrations as m; "
            "print(pgq_sa.__file__); print(m.versions_path())",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
    )
    module_file, versions = probe.stdout.split()
    assert module_file.startswith(str(site))
    assert versions.startswith(str(site))
    done = subprocess.run(
        [sys.executable, "-m", "pgq_sa", "--database-url", url, "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    check = subprocess.run(
        [sys.executable, "-m", "pgq_sa", "--database-url", url, "db", "check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
    )
    assert check.returncode == 0, check.stderr


def test_metadata_create_all_gives_jobs_its_storage_parameters(empty_engine):
    """``Queue.metadata.create_all`` (for users who skip migrations in throwaway databases) makes
    what step 0001 makes, on SQLAlchemy 2.0 and 2.1 alike (no 2.1-only table options)."""
    with empty_engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA made"))
    Queue(schema="made").metadata.create_all(empty_engine)
    with empty_engine.connect() as connection:
        options = connection.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = 'made.jobs'::regclass")
        ).scalar_one()
    assert "fillfactor=80" in options
    assert "autovacuum_vacuum_scale_factor=0.01" in options
