"""The short fault run (the full one is `nox -s faults`), and the oracle catching what it must.

The fault run starts its own embedded PostgreSQL, whatever server the rest of the suite uses,
so it can restart it.
"""

from __future__ import annotations

import fault_app
import pytest
from fault_oracle import judge
from fault_run import Config, run_faults
from sqlalchemy import text

from pgq_sa import JobSpec, Queue

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.mark.timeout(280)
def test_short_fault_run_loses_nothing_and_explains_every_duplicate():
    config = Config.short()
    report = run_faults(config)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.succeeded == report.jobs == config.jobs
    assert report.kills == config.kills
    assert report.pauses == 1
    assert report.restarts == {"fast": 1, "immediate": 1}
    assert report.duplicate_executions >= report.duplicated_jobs
    assert report.effects_checked == fault_app.TRANSACTIONAL


def test_the_oracle_flags_lost_unfinished_unexplained_and_double_effects(engine):
    with engine.begin() as connection:
        for statement in fault_app.SIDE_TABLES:
            connection.execute(text(statement))
    ids = Queue().enqueue_many(engine, [JobSpec("t", {"n": n}) for n in range(6)])
    ok, lost, unfinished, killed_dup, stray_dup, double = ids
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE pgq.jobs SET state = 'succeeded', attempt = 2 WHERE id = ANY(:ids)"),
            {"ids": [ok, killed_dup, stray_dup, double]},
        )
        connection.execute(
            text("UPDATE pgq.jobs SET state = 'failed', attempt = 1 WHERE id = :id"), {"id": lost}
        )
        runs = [(ok, 2, 10), (killed_dup, 1, 66), (killed_dup, 2, 10)]
        runs += [(stray_dup, 1, 11), (stray_dup, 2, 10), (double, 2, 10)]
        for job_id, attempt, pid in runs:
            connection.execute(
                text("INSERT INTO fault_runs (job_id, attempt, pid) VALUES (:j, :a, :p)"),
                {"j": job_id, "a": attempt, "p": pid},
            )
        for job_id in (ok, double, double):
            connection.execute(
                text("INSERT INTO fault_effects (job_id, attempt, pid) VALUES (:j, 2, 10)"),
                {"j": job_id},
            )
    report = judge(
        engine,
        ids,
        [ok, double],
        killed={66},
        paused=set(),
        effects_checked=True,
        kills=1,
        terminations=0,
        restarts={},
        pauses=0,
    )
    assert report.lost == [lost]
    assert report.unfinished == [unfinished]
    assert report.unexplained == [stray_dup]
    assert report.effect_errors == [double]
    assert (report.duplicated_jobs, report.duplicate_executions) == (2, 2)
    assert not report.ok
