"""Cron schedules: validation, DST with an injected clock, missed runs, and exactly one job per
fire time across workers of every kind."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from worker_helpers import start_worker

from pgq_sa import Queue
from pgq_sa._cli import cli
from pgq_sa._cron import cron_schedule
from pgq_sa._ops import schedules as scheduler
from pgq_sa._worker.lanes import SyncDatabase

UTC = timezone.utc
NEW_YORK = ZoneInfo("America/New_York")


def _walk(schedule, start: datetime, count: int) -> list[datetime]:
    times, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        times.append(moment)
    return times


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("*/0 * * * *", "UTC", "not valid"),
        ("61 * * * *", "UTC", "not valid"),
        ("* * * *", "UTC", "has 4 fields"),
        ("* * * * * * *", "UTC", "has 7 fields"),
        ("every minute", "UTC", "fields"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
        ("* * * * *", "", "unknown time zone"),
    ],
)
def test_bad_schedules_fail_at_registration(expression, zone, message):
    queue = Queue()
    with pytest.raises(ValueError, match=message):
        queue.periodic(expression, name="t", timezone=zone)(lambda job: None)
    assert queue.tasks == {}
    assert queue.schedules == {}


def test_periodic_registers_a_task_and_a_schedule():
    queue = Queue()

    @queue.periodic(
        "*/5 * * * * *", name="reports.refresh", timezone="Europe/Paris", max_attempts=2
    )
    def refresh(job):
        return None

    assert queue.tasks["reports.refresh"].max_attempts == 2
    schedule = queue.schedules["reports.refresh"]
    assert schedule.timezone == "Europe/Paris"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert _walk(schedule, start, 2) == [
        start + timedelta(seconds=5),
        start + timedelta(seconds=10),
    ]
    with pytest.raises(ValueError, match="already registered"):
        queue.periodic("* * * * *", name="reports.refresh")(refresh)
    with pytest.raises(TypeError):
        queue.periodic(42, name="x")(refresh)  # type: ignore[arg-type]


def test_spring_forward_fixed_time_fires_once_after_the_gap():
    schedule = cron_schedule("t", "30 2 * * *", "America/New_York")
    fires = _walk(schedule, datetime(2026, 3, 7, 12, tzinfo=UTC), 3)
    local = [f.astimezone(NEW_YORK) for f in fires]
    assert [(d.month, d.day) for d in local] == [(3, 8), (3, 9), (3, 10)]  # no day skipped
    assert local[0].hour == 3  # 02:30 does not exist on 8 March: it runs as the clock jumps
    assert [d.hour for d in local[1:]] == [2, 2]


def test_fall_back_fixed_time_fires_once():
    schedule = cron_schedule("t", "30 1 * * *", "America/New_York")
    fires = _walk(schedule, datetime(2026, 10, 31, 12, tzinfo=UTC), 3)
    local = [f.astimezone(NEW_YORK) for f in fires]
    assert [(d.month, d.day, d.hour, d.minute) for d in local] == [
        (11, 1, 1, 30),
        (11, 2, 1, 30),
        (11, 3, 1, 30),
    ]
    assert local[0].utcoffset() == timedelta(hours=-4)  # the first 01:30 of 1 November


def test_frequent_schedule_keeps_its_rhythm_through_both_changes():
    schedule = cron_schedule("t", "*/30 * * * *", "America/New_York")
    autumn = _walk(schedule, datetime(2026, 11, 1, 4, 50, tzinfo=UTC), 6)
    assert [b - a for a, b in itertools.pairwise(autumn)] == [timedelta(minutes=30)] * 5
    spring = _walk(schedule, datetime(2026, 3, 8, 6, 10, tzinfo=UTC), 6)
    assert [b - a for a, b in itertools.pairwise(spring)] == [timedelta(minutes=30)] * 5


def test_weekday_fields_read_the_local_date():
    schedule = cron_schedule("t", "0 * * * 1", "Asia/Tokyo")  # hourly, Mondays in Tokyo
    fires = _walk(schedule, datetime(2026, 1, 4, 0, tzinfo=UTC), 30)  # Sunday 09:00 Tokyo
    tokyo = [f.astimezone(ZoneInfo("Asia/Tokyo")) for f in fires]
    assert {d.weekday() for d in tokyo} == {0}
    assert tokyo[0].hour == 0


@pytest.mark.parametrize(
    ("missed", "expected"),
    [("latest", 1), ("skip", 0), ("all", 5)],
)
def test_missed_runs_after_downtime(missed, expected):
    schedule = cron_schedule("t", "0 * * * *", "UTC", missed=missed, catch_up_limit=5)
    last = datetime(2026, 1, 1, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 20, tzinfo=UTC)  # ten hourly runs were missed
    due = schedule.due(last, last, now)
    assert len(due) == expected
    if due:
        assert due[-1] == datetime(2026, 1, 1, 10, tzinfo=UTC)
    on_time = schedule.due(last, last, datetime(2026, 1, 1, 1, 0, 3, tzinfo=UTC))
    assert on_time == [datetime(2026, 1, 1, 1, tzinfo=UTC)]  # every policy fires on time


def test_a_week_of_missed_seconds_is_cheap():
    schedule = cron_schedule("t", "* * * * * *", "UTC", missed="all", catch_up_limit=3)
    now = datetime(2026, 1, 8, tzinfo=UTC)
    due = schedule.due(now - timedelta(days=7), now - timedelta(days=7), now)
    assert due == [now - timedelta(seconds=2), now - timedelta(seconds=1), now]


def _state(queue: Queue) -> scheduler.SchedulerState:
    return scheduler.SchedulerState(queue.schedules, queue.tasks)


def test_ticks_at_a_dst_boundary_with_an_injected_clock(engine):
    queue = Queue()

    @queue.periodic("30 1 * * *", name="nightly", timezone="America/New_York")
    def nightly(job):
        return None

    database = SyncDatabase(engine)
    state = _state(queue)
    start = datetime(2026, 10, 31, 12, tzinfo=UTC)
    database.run(scheduler.upsert(queue.statements, state, start))
    with engine.begin() as connection:
        connection.execute(text("UPDATE pgq.schedules SET updated_at = :t"), {"t": start})
    database.run(scheduler.touch(queue.statements, state))
    clock = start
    while clock < datetime(2026, 11, 3, 12, tzinfo=UTC):  # three nights, 10-minute ticks
        clock += timedelta(minutes=10)
        database.run(scheduler.fire_due(queue.statements, state, clock))
    with engine.connect() as connection:
        fired = (
            connection.execute(text("SELECT scheduled_at FROM pgq.jobs ORDER BY scheduled_at"))
            .scalars()
            .all()
        )
    assert [f.astimezone(NEW_YORK).strftime("%m-%d %H:%M %z") for f in fired] == [
        "11-01 01:30 -0400",
        "11-02 01:30 -0500",
        "11-03 01:30 -0500",
    ]


def test_two_schedulers_at_the_same_instant_enqueue_once(engine):
    queue = Queue()

    @queue.periodic("* * * * * *", name="tick")
    def tick(job):
        return None

    database = SyncDatabase(engine)
    first, second = _state(queue), _state(queue)
    base = datetime(2026, 5, 1, tzinfo=UTC)
    for state in (first, second):
        database.run(scheduler.upsert(queue.statements, state, base))
    with engine.begin() as connection:
        connection.execute(text("UPDATE pgq.schedules SET updated_at = :t"), {"t": base})
    for state in (first, second):
        database.run(scheduler.touch(queue.statements, state))
    now = base + timedelta(seconds=1)
    inserted = [database.run(scheduler.fire_due(queue.statements, s, now)) for s in (first, second)]
    assert sorted(inserted) == [0, 1]


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_second_level_schedule_across_mixed_workers(engine, database_url):
    queue = Queue()

    @queue.periodic("* * * * * *", name="every.second")
    def every_second(job):
        return job.scheduled_at.isoformat()

    workers = [
        start_worker(kind, queue, database_url, heartbeat_interval=0.5)
        for kind in ("threads", "asyncio", "trio")
    ]
    time.sleep(7.5)
    for running in workers:
        running.stop()
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT scheduled_at, started_at, state::text FROM pgq.jobs ORDER BY scheduled_at")
        ).all()
    fire_times = [row.scheduled_at for row in rows]
    assert len(fire_times) >= 6
    assert len(set(fire_times)) == len(fire_times)  # no fire time twice
    gaps = {b - a for a, b in itertools.pairwise(fire_times)}
    assert gaps == {timedelta(seconds=1)}  # none skipped
    late = [(row.started_at - row.scheduled_at).total_seconds() for row in rows if row.started_at]
    assert late
    assert max(late) < 1.0, late


def test_schedules_cli_lists_disables_and_enables(engine, database_url):
    queue = Queue()

    @queue.periodic("*/10 * * * *", name="tidy", timezone="Europe/Berlin")
    def tidy(job):
        return None

    SyncDatabase(engine).run(scheduler.upsert(queue.statements, _state(queue), datetime.now(UTC)))
    url = database_url.render_as_string(False)
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["--database-url", url, "schedules", "--json"]).output)
    assert listed[0]["name"] == "tidy"
    assert listed[0]["expression"] == "*/10 * * * *"
    assert listed[0]["timezone"] == "Europe/Berlin"
    assert listed[0]["enabled"] is True
    assert listed[0]["next_run"] is not None
    result = runner.invoke(cli, ["--database-url", url, "schedules", "disable", "tidy"])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(cli, ["--database-url", url, "schedules", "--json"]).output)
    assert listed[0]["enabled"] is False
    assert runner.invoke(cli, ["--database-url", url, "schedules", "enable", "tidy"]).exit_code == 0
    missing = runner.invoke(cli, ["--database-url", url, "schedules", "enable", "nope"])
    assert missing.exit_code == 1
    assert "no schedule named 'nope'" in missing.output
    plain = runner.invoke(cli, ["--database-url", url, "schedules"])
    assert "tidy" in plain.output


def test_disabled_schedule_does_not_fire(engine):
    queue = Queue()

    @queue.periodic("* * * * * *", name="quiet")
    def quiet(job):
        return None

    database = SyncDatabase(engine)
    state = _state(queue)
    base = datetime(2026, 5, 1, tzinfo=UTC)
    database.run(scheduler.upsert(queue.statements, state, base))
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE pgq.schedules SET enabled = false, updated_at = :t"), {"t": base}
        )
    database.run(scheduler.touch(queue.statements, state))
    assert (
        database.run(scheduler.fire_due(queue.statements, state, base + timedelta(seconds=5))) == 0
    )


def test_a_schedule_no_worker_declares_shows_as_not_declared(engine, database_url):
    queue = Queue()

    @queue.periodic("0 3 * * *", name="retired")
    def retired(job):
        return None

    SyncDatabase(engine).run(scheduler.upsert(queue.statements, _state(queue), datetime.now(UTC)))
    with engine.begin() as connection:  # the last worker that declared it stopped long ago
        connection.execute(text("UPDATE pgq.schedules SET seen_at = now() - interval '1 hour'"))
    url = database_url.render_as_string(False)
    listed = json.loads(
        CliRunner().invoke(cli, ["--database-url", url, "schedules", "--json"]).output
    )
    assert listed[0]["name"] == "retired"
    assert listed[0]["status"] == "not declared"  # kept, shown, and no worker fires it
