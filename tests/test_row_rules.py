"""The jobs table's row rules (migration step 0006): checked by a trigger on the columns a producer
or an operator writes, with the errors the CHECK constraints they replace gave, and never fired
by the worker's own claims and finishes (which paid for every CHECK on every statement)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from pgq_sa import Queue
from pgq_sa import migrations as m
from pgq_sa._schema import JOBS_ROW_RULES, RULE_COLUMNS

# A row breaking each rule, as the columns an INSERT gives it.
BROKEN = {
    "jobs_task_length_check": {"task": "''"},
    "jobs_queue_length_check": {"queue": "''"},
    "jobs_max_attempts_range_check": {"max_attempts": "0"},
    "jobs_attempt_range_check": {"attempt": "3", "max_attempts": "2"},
    "jobs_running_has_lease_check": {"state": "'running'", "attempt": "1"},
    "jobs_dedupe_key_length_check": {"dedupe_key": "''"},
    "jobs_timeout_positive_check": {"timeout": "0"},
    "jobs_waiting_for_check": {"waiting_for": "-1"},
    "jobs_on_upstream_failure_check": {"on_upstream_failure": "'ignore'"},
}
# What the worker's claim and finish statements set (see pgq_sa._sql.claim and .finish).
WORKER_WRITES = {
    "state",
    "attempt",
    "worker_id",
    "run_at",
    "started_at",
    "finished_at",
    "result",
    "error",
}


def _install(engine, schema: str, door: str) -> None:
    if door == "migrations":
        m.db_upgrade(engine, schema=schema)
    else:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        Queue(schema=schema).metadata.create_all(engine)


def _insert(engine, schema: str, columns: dict[str, str]) -> None:
    row = {"task": "'t'", **columns}
    with engine.begin() as connection:
        connection.execute(
            text(
                f'INSERT INTO "{schema}".jobs ({", ".join(row)}) VALUES ({", ".join(row.values())})'
            )
        )


def test_every_rule_has_a_broken_row():
    assert set(BROKEN) == {name for name, _ in JOBS_ROW_RULES}


@pytest.mark.parametrize("door", ["migrations", "create_all"])
def test_a_row_breaking_a_rule_is_refused_as_its_check_was(empty_engine, door):
    _install(empty_engine, "ruled", door)
    for name, columns in BROKEN.items():
        with pytest.raises(IntegrityError) as refused:
            _insert(empty_engine, "ruled", columns)
        assert refused.value.orig.sqlstate == "23514", name  # check_violation
        assert refused.value.orig.diag.constraint_name == name
        assert f'violates check constraint "{name}"' in str(refused.value)
    _insert(empty_engine, "ruled", {"queue": "'fine'", "dedupe_key": "'k'", "timeout": "1.5"})
    with empty_engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM ruled.jobs")).scalar_one() == 1


@pytest.mark.parametrize("door", ["migrations", "create_all"])
def test_an_update_of_a_producer_column_is_checked(empty_engine, door):
    _install(empty_engine, "ruled", door)
    _insert(empty_engine, "ruled", {})
    for assignment, name in [
        ("max_attempts = 5000", "jobs_max_attempts_range_check"),
        ("queue = ''", "jobs_queue_length_check"),
        ("waiting_for = waiting_for - 1", "jobs_waiting_for_check"),
    ]:
        with pytest.raises(IntegrityError) as refused, empty_engine.begin() as connection:
            connection.execute(text(f"UPDATE ruled.jobs SET {assignment}"))
        assert refused.value.orig.diag.constraint_name == name


@pytest.mark.parametrize("door", ["migrations", "create_all"])
def test_the_workers_own_writes_do_not_fire_the_rules(empty_engine, door):
    """The trigger fires only for an UPDATE setting one of RULE_COLUMNS, none of which a claim
    or a finish sets, and the table keeps no CHECK of its own."""
    _install(empty_engine, "ruled", door)
    with empty_engine.connect() as connection:
        fired_by = set(
            connection.execute(
                text(
                    "SELECT a.attname FROM pg_trigger AS t "
                    "JOIN pg_attribute AS a ON a.attrelid = t.tgrelid "
                    "AND a.attnum = ANY (t.tgattr::int2[]) "
                    "WHERE t.tgrelid = 'ruled.jobs'::regclass AND t.tgname = 'jobs_check_rules'"
                )
            ).scalars()
        )
        checks = connection.execute(
            text(
                "SELECT count(*) FROM pg_constraint "
                "WHERE conrelid = 'ruled.jobs'::regclass AND contype = 'c'"
            )
        ).scalar_one()
    assert fired_by == set(RULE_COLUMNS)
    assert not fired_by & WORKER_WRITES
    assert checks == 0


def test_downgrading_step_0006_brings_the_checks_back(empty_engine):
    m.db_upgrade(empty_engine)
    m.db_downgrade(empty_engine, revision="pgq_sa_0005")
    with empty_engine.connect() as connection:
        checks = set(
            connection.execute(
                text(
                    "SELECT conname FROM pg_constraint "
                    "WHERE conrelid = 'pgq.jobs'::regclass AND contype = 'c'"
                )
            ).scalars()
        )
        triggers = connection.execute(
            text("SELECT count(*) FROM pg_trigger WHERE tgname = 'jobs_check_rules'")
        ).scalar_one()
    assert checks == set(BROKEN)
    assert triggers == 0
    with pytest.raises(IntegrityError) as refused:
        _insert(empty_engine, "pgq", BROKEN["jobs_timeout_positive_check"])
    assert refused.value.orig.diag.constraint_name == "jobs_timeout_positive_check"
    m.db_upgrade(empty_engine)
    assert m.db_check(empty_engine).ok
