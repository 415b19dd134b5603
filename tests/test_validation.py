"""Bad input is refused with a clear error before any SQL runs, and nothing stored changes."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from helpers import snapshot
from sqlalchemy import event

from pgq_sa import JobSpec, Queue
from pgq_sa._schema import build_tables


@pytest.fixture
def queue() -> Queue:
    return Queue(max_payload_bytes=10_000)


@pytest.fixture
def statements_seen(engine):
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


circular: list = []
circular.append(circular)

BAD_ENQUEUES = [
    ({"task": ""}, ValueError, "must not be empty"),
    ({"task": "x" * 256}, ValueError, "limit is 255"),
    ({"task": "a\x00b"}, ValueError, "NUL"),
    ({"task": None}, TypeError, "must be a str"),
    ({"task": 42}, TypeError, "must be a str"),
    ({"payload": {"when": datetime(2020, 1, 1)}}, TypeError, "JSON-serialisable"),
    ({"payload": {"x": math.nan}}, ValueError, "valid JSON"),
    ({"payload": [math.inf]}, ValueError, "valid JSON"),
    ({"payload": circular}, ValueError, "Circular|nested"),
    ({"payload": {1, 2}}, TypeError, "JSON-serialisable"),
    ({"payload": b"bytes"}, TypeError, "JSON-serialisable"),
    ({"payload": "x" * 20_000}, ValueError, "limit is 10000 bytes"),
    ({"payload": {"s": "a\x00b"}}, ValueError, "NUL"),
    ({"priority": True}, TypeError, "priority must be an int"),
    ({"priority": 1.5}, TypeError, "priority must be an int"),
    ({"priority": 40000}, ValueError, "out of range"),
    ({"priority": -40000}, ValueError, "out of range"),
    ({"delay": -1}, ValueError, "0 or more"),
    ({"delay": math.nan}, ValueError, "finite"),
    ({"delay": "5"}, TypeError, "seconds"),
    ({"delay": 5, "run_at": datetime.now().astimezone()}, ValueError, "not both"),
    ({"run_at": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
    ({"run_at": "2030-01-01"}, TypeError, "datetime"),
    ({"dedupe_key": ""}, ValueError, "must not be empty"),
    ({"dedupe_key": 7}, TypeError, "dedupe_key must be a str"),
    ({"dedupe_key": "k" * 1025}, ValueError, "limit is 1024"),
    ({"queue": ""}, ValueError, "queue name"),
    ({"max_attempts": 0}, ValueError, "out of range"),
    ({"max_attempts": 1001}, ValueError, "out of range"),
    ({"max_attempts": False}, TypeError, "max_attempts must be an int"),
    ({"priority": [1]}, TypeError, "priority must be an int"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_ENQUEUES)
def test_bad_enqueue_is_refused_before_sql(queue, engine, statements_seen, options, error, message):
    engine.dispose()
    before = snapshot(engine)
    statements_seen.clear()
    arguments = {"task": "ok.task", **options}
    task = arguments.pop("task")
    payload = arguments.pop("payload", None)
    with pytest.raises(error, match=message):
        queue.enqueue(engine, task, payload, **arguments)
    assert statements_seen == []
    with pytest.raises(error, match=message):
        queue.enqueue_many(engine, [JobSpec("fine"), JobSpec(task, payload, **arguments)])
    assert statements_seen == []
    assert snapshot(engine) == before


def test_enqueue_many_names_the_bad_item(queue, engine):
    with pytest.raises(ValueError, match=r"job 2 \('t'\): priority 99999 is out of range"):
        queue.enqueue_many(engine, [JobSpec("t"), JobSpec("t"), JobSpec("t", priority=99999)])
    with pytest.raises(TypeError, match="item 1 is a dict"):
        queue.enqueue_many(engine, [JobSpec("t"), {"task": "t"}])
    with pytest.raises(TypeError, match="iterable of JobSpec"):
        queue.enqueue_many(engine, JobSpec("t"))


def test_unknown_job_ids_and_bad_ids(queue, engine):
    assert queue.get(engine, 123456) is None
    with pytest.raises(TypeError, match="job id must be an int"):
        queue.get(engine, "1")
    with pytest.raises(ValueError, match="out of range"):
        queue.cancel(engine, 0)
    with pytest.raises(ValueError, match="out of range"):
        queue.retry(engine, 2**63)


@pytest.mark.parametrize(
    "name",
    ["", "Pgq", "pg_catalog", "public", "1abc", 'x"; DROP TABLE y; --', "a" * 64, "a-b", "ä"],
)
def test_hostile_or_reserved_schema_names_are_refused(name):
    with pytest.raises(ValueError, match="schema"):
        Queue(schema=name)
    with pytest.raises(ValueError, match="schema"):
        build_tables(name)


def test_schema_name_type():
    with pytest.raises(TypeError):
        Queue(schema=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "1s"}, TypeError, "timeout"),
        ({"priority": 1.0}, TypeError, "priority"),
        ({"queue": ""}, ValueError, "queue name"),
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": 2.5}, TypeError, "concurrency"),
        ({"rate_limit": "fast"}, ValueError, "COUNT/PERIOD"),
        ({"rate_limit": "0/s"}, ValueError, "at least 1"),
        ({"rate_limit": 100}, TypeError, "rate_limit"),
    ],
)
def test_bad_task_options_fail_at_declaration(options, error, message):
    queue = Queue()
    with pytest.raises(error, match=message):
        queue.task("t", **options)(lambda job: None)
    assert queue.tasks == {}


def test_task_declaration_rules():
    queue = Queue()

    @queue.task("t", rate_limit="100/s", timeout=timedelta(seconds=3))
    def handler(job):
        return None

    assert queue.tasks["t"].rate_limit.count == 100
    assert queue.tasks["t"].rate_limit.period == 1.0
    assert queue.tasks["t"].timeout == 3.0
    with pytest.raises(ValueError, match="already registered"):
        queue.task("t")(handler)
    with pytest.raises(TypeError, match="callable"):
        queue.task("u")(42)
    with pytest.raises(TypeError, match="parentheses"):
        queue.task(handler)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/s", 100, 1),
        ("10/m", 10, 60),
        ("5/10s", 5, 10),
        ("1000 / hour", 1000, 3600),
        ("3/500ms", 3, 0.5),
        ("7/d", 7, 86400),
    ],
)
def test_rate_limit_syntax(text, count, period):
    from pgq_sa import RateLimit

    limit = RateLimit.parse(text)
    assert (limit.count, limit.period) == (count, period)
