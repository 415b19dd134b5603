"""The bad-input matrix, on a database that already holds data: every refused call says what is
wrong, runs no SQL, and leaves every stored row as it was. Extends tests/test_validation.py (whose
enqueue cases run here again on the async path and on a populated database); the command line gets
the same inputs and answers with a message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from helpers import snapshot
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from test_validation import BAD_ENQUEUES

from pgq_sa import JobSpec, JobStatus, Queue, ThreadWorker
from pgq_sa._cli import cli
from pgq_sa._config import make_async_engine, make_engine

APPS = str(Path(__file__).parent / "apps")
SQL_TEXT = "x'); drop table pgq.jobs; --"


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: as ambiguous as a naive datetime."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


def populate(engine: Engine) -> None:
    """A row in every table: queued, cancelled and deduplicated jobs, a paused queue, a worker,
    a task limit and a schedule, so that 'nothing changed' means something."""
    queue = Queue()
    queue.enqueue(engine, "seed.a", {"n": 1}, dedupe_key="held")
    cancelled = queue.enqueue(engine, "seed.b", [1, 2], priority=5)
    queue.cancel(engine, cancelled)
    queue.pause(engine, "paused")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pgq.workers (id, name, kind, hostname, pid, tasks, concurrency) "
                "VALUES (gen_random_uuid(), 'w', 'thread', 'h', 1, ARRAY['seed.a'], 1)"
            )
        )
        connection.execute(text("INSERT INTO pgq.task_limits (task, concurrency) VALUES ('a', 2)"))
        connection.execute(
            text(
                "INSERT INTO pgq.schedules (name, task, expression) VALUES ('s', 's', '* * * * *')"
            )
        )


@pytest.fixture(scope="module")
def shared_url(admin_engine: Engine, server_url: URL, template_database: str) -> Iterator[URL]:
    """One populated database for the whole module: a refused call changes nothing, and every
    case checks that, so the cases can share it (a database per case costs a second each)."""
    name = f"pgq_sa_test_bad_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = server_url.set(database=name)
    engine = make_engine(url)
    try:
        populate(engine)
        engine.dispose()
        yield url
    finally:
        engine.dispose()
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def populated(shared_url: URL) -> Iterator[Engine]:
    engine = make_engine(shared_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sql_seen(populated: Engine):
    """Every statement sent through the test's engine from now on."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(populated, "before_cursor_execute", record)
    yield seen
    event.remove(populated, "before_cursor_execute", record)


def refused(engine: Engine, seen: list[str], error: type[Exception], message: str, call) -> None:
    """``call()`` raises ``error`` matching ``message``, sends no SQL, and changes nothing."""
    before = snapshot(engine)
    seen.clear()
    with pytest.raises(error, match=message):
        call()
    assert seen == [], "SQL ran before the input was refused"
    assert snapshot(engine) == before


# --- enqueue, enqueue_many, enqueue_async --------------------------------------------------------

MORE_BAD_ENQUEUES = [
    ({"task": "a\ud800b"}, ValueError, "surrogate"),
    ({"task": b"bytes"}, TypeError, "task name must be a str"),
    ({"payload": object()}, TypeError, "JSON-serialisable"),
    ({"payload": Decimal("1.5")}, TypeError, "JSON-serialisable"),
    ({"payload": {(1, 2): "tuple key"}}, TypeError, "keys must be"),
    ({"payload": {"s": "\udfff"}}, ValueError, "surrogate"),
    ({"payload": -math.inf}, ValueError, "valid JSON"),
    ({"payload": 10**5000}, ValueError, "valid JSON"),
    ({"priority": 32768}, ValueError, "out of range"),
    ({"priority": -32769}, ValueError, "out of range"),
    ({"priority": "1"}, TypeError, "priority must be an int"),
    ({"delay": timedelta(seconds=-1)}, ValueError, "0 or more"),
    ({"delay": True}, TypeError, "seconds"),
    ({"delay": math.inf}, ValueError, "finite"),
    ({"delay": 10**12}, ValueError, "century"),
    ({"run_at": datetime(2030, 1, 1, tzinfo=NoOffset())}, ValueError, "timezone-aware"),
    ({"run_at": 1893456000}, TypeError, "datetime"),
    ({"max_attempts": -1}, ValueError, "out of range"),
    ({"max_attempts": True}, TypeError, "max_attempts must be an int"),
    ({"max_attempts": 2.0}, TypeError, "max_attempts must be an int"),
    ({"dedupe_key": "a\x00"}, ValueError, "NUL"),
    ({"dedupe_key": "\ud800"}, ValueError, "surrogate"),
    ({"queue": "q" * 256}, ValueError, "limit is 255"),
    ({"queue": "q\x00"}, ValueError, "NUL"),
    ({"queue": 3}, TypeError, "queue name must be a str"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_ENQUEUES + MORE_BAD_ENQUEUES)
def test_bad_enqueue_on_a_populated_database(populated, sql_seen, options, error, message):
    queue = Queue(max_payload_bytes=10_000)
    arguments = {"task": "ok.task", **options}
    task = arguments.pop("task")
    payload = arguments.pop("payload", None)
    refused(
        populated,
        sql_seen,
        error,
        message,
        lambda: queue.enqueue(populated, task, payload, **arguments),
    )
    spec = JobSpec(task, payload, **arguments)
    refused(
        populated,
        sql_seen,
        error,
        message,
        lambda: queue.enqueue_many(populated, [JobSpec("fine"), spec, JobSpec("fine")]),
    )


# One case per category on the async path (an AsyncEngine on asyncpg).
ASYNC_CASES = [
    ({"task": ""}, ValueError, "must not be empty"),
    ({"payload": {1, 2}}, TypeError, "JSON-serialisable"),
    ({"payload": "x" * 20_000}, ValueError, "limit is 10000 bytes"),
    ({"priority": True}, TypeError, "priority must be an int"),
    ({"delay": -1}, ValueError, "0 or more"),
    ({"run_at": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
    ({"max_attempts": 0}, ValueError, "out of range"),
    ({"dedupe_key": ""}, ValueError, "must not be empty"),
    ({"queue": ""}, ValueError, "queue name"),
]


def test_bad_enqueue_async(populated, shared_url):
    queue = Queue(max_payload_bytes=10_000)
    async_engine = make_async_engine(shared_url)
    seen: list[str] = []
    event.listen(
        async_engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2])
    )

    async def attempt(options):
        arguments = {"task": "ok.task", **options}
        task = arguments.pop("task")
        payload = arguments.pop("payload", None)
        try:
            await queue.enqueue_async(async_engine, task, payload, **arguments)
        except Exception as error:
            first = error
        else:
            raise AssertionError(f"{options} was accepted")
        try:
            await queue.enqueue_many_async(async_engine, [JobSpec(task, payload, **arguments)])
        except Exception as error:
            return first, error
        raise AssertionError(f"{options} was accepted by enqueue_many_async")

    before = snapshot(populated)
    for options, error, message in ASYNC_CASES:
        errors = anyio.run(attempt, options, backend="asyncio")
        for raised in errors:
            assert isinstance(raised, error), (options, raised)
            assert message in str(raised), (options, raised)
    assert seen == []
    assert snapshot(populated) == before
    anyio.run(async_engine.dispose, backend="asyncio")


def test_payload_limit_is_configurable(populated, sql_seen):
    small = Queue(max_payload_bytes=20)
    refused(
        populated,
        sql_seen,
        ValueError,
        "is 21 bytes of JSON; the limit is 20",
        lambda: small.enqueue(populated, "t", "x" * 19),
    )
    assert small.get(populated, small.enqueue(populated, "t", "x" * 18)).payload == "x" * 18
    for bad, error in [(0, ValueError), (-1, ValueError), (True, TypeError), ("1MB", TypeError)]:
        with pytest.raises(error, match="max_payload_bytes"):
            Queue(max_payload_bytes=bad)


def test_sql_text_is_a_valid_name_stored_verbatim(engine):
    """SQL in names, keys and payloads is data: stored and read back byte for byte, run by a
    worker, and no statement ever interprets it."""
    populate(engine)
    queue = Queue()
    ran: list[object] = []

    @queue.task(SQL_TEXT, queue="q'; --")
    def handler(job):
        ran.append(job.payload)
        return {"echo": job.payload}

    payload = {SQL_TEXT: SQL_TEXT, "nested": ["'; DELETE FROM pgq.workers; --", '"\\']}
    first = queue.enqueue(engine, SQL_TEXT, payload, dedupe_key=SQL_TEXT)
    assert queue.enqueue(engine, SQL_TEXT, payload, dedupe_key=SQL_TEXT) == first
    (second,) = queue.enqueue_many(engine, [JobSpec(SQL_TEXT, SQL_TEXT, queue="$$; --")])
    info = queue.get(engine, first)
    assert (info.task, info.queue, info.payload, info.dedupe_key) == (
        SQL_TEXT,
        "q'; --",
        payload,
        SQL_TEXT,
    )
    assert queue.get(engine, second).queue == "$$; --"
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT task, payload::text FROM pgq.jobs WHERE id = :id"), {"id": first}
        ).one()
    assert stored.task == SQL_TEXT
    assert json.loads(stored.payload) == payload
    queue.pause(engine, SQL_TEXT)
    queue.resume(engine, SQL_TEXT)
    ThreadWorker(queue, engine, threads=2, queues=["q'; --"], poll_interval=0.1).run(
        until_empty=True
    )
    assert ran == [payload]
    assert queue.get(engine, first).status is JobStatus.succeeded
    assert queue.get(engine, first).result == {"echo": payload}
    with engine.connect() as connection:
        tables = connection.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'pgq'")
        ).scalar_one()
        workers = connection.execute(text("SELECT count(*) FROM pgq.workers")).scalar_one()
    # jobs, workers, queues, task_limits, schedules, workflows, job_dependencies, settings and the
    # version marker
    assert tables == 9
    assert workers == 1  # the seeded one; the worker deregistered itself


# --- ids, names, binds -------------------------------------------------------------------------

BAD_IDS = [
    ("1", TypeError, "job id must be an int"),
    (1.0, TypeError, "job id must be an int"),
    (True, TypeError, "job id must be an int"),
    (None, TypeError, "job id must be an int"),
    (0, ValueError, "out of range"),
    (-1, ValueError, "out of range"),
    (2**63, ValueError, "out of range"),
]


@pytest.mark.parametrize(("job_id", "error", "message"), BAD_IDS)
def test_bad_job_ids(populated, sql_seen, job_id, error, message):
    queue = Queue()
    for method in (queue.get, queue.cancel, queue.retry, queue.wait):
        refused(populated, sql_seen, error, message, lambda m=method: m(populated, job_id))
    for method in (queue.get_async, queue.cancel_async, queue.retry_async, queue.wait_async):
        refused(
            populated,
            sql_seen,
            error,
            message,
            lambda m=method: anyio.run(m, populated, job_id, backend="asyncio"),
        )


def test_unknown_job_ids(populated):
    queue = Queue()
    before = snapshot(populated)
    assert queue.get(populated, 424242) is None
    assert queue.cancel(populated, 424242) is False
    assert queue.retry(populated, 424242) is False
    with pytest.raises(LookupError, match="no job with id 424242"):
        queue.wait(populated, 424242, timeout=5)
    with pytest.raises(LookupError, match="no job with id 424242"):
        anyio.run(queue.wait_async, populated, 424242, 5, backend="asyncio")
    assert snapshot(populated) == before


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda q, e: q.wait(e, 1, timeout=-1), ValueError, "timeout"),
        (lambda q, e: q.wait(e, 1, timeout="1"), TypeError, "timeout"),
        (lambda q, e: q.pause(e, ""), ValueError, "queue name must not be empty"),
        (lambda q, e: q.resume(e, "q" * 256), ValueError, "limit is 255"),
        (lambda q, e: q.pause(e, None), TypeError, "queue name must be a str"),
        (lambda q, e: q.enqueue(None, "t"), TypeError, "bind must be"),
        (lambda q, e: q.get(e.connect, 1), TypeError, "bind must be"),
        (lambda q, e: q.enqueue_many(e, "abc"), TypeError, "iterable of JobSpec"),
        (lambda q, e: q.enqueue_many(e, [("t", {})]), TypeError, "not a JobSpec"),
        (
            lambda q, e: anyio.run(q.pause_async, e, "a\x00", backend="asyncio"),
            ValueError,
            "NUL",
        ),
        (
            lambda q, e: anyio.run(q.wait_async, object(), 1, backend="asyncio"),
            TypeError,
            "AsyncSession",
        ),
    ],
)
def test_other_bad_calls(populated, sql_seen, call, error, message):
    refused(populated, sql_seen, error, message, lambda: call(Queue(), populated))


@pytest.mark.parametrize(
    "name",
    [
        'pgq"',
        "pgq'",
        "pgq;",
        "pgq; drop schema pgq cascade",
        "PGQ",
        "Pgq",
        "public",
        "pg_catalog",
        "pg_toast",
        "information_schema",
        "a" * 64,
        "",
        " pgq",
        "pgq\x00",
    ],
)
def test_hostile_schema_names(name):
    with pytest.raises(ValueError, match="schema"):
        Queue(schema=name)


def test_schema_name_boundaries():
    assert Queue(schema="a" * 63).schema == "a" * 63
    assert Queue(schema="_pgq_2").schema == "_pgq_2"
    for bad in (None, b"pgq", 5):
        with pytest.raises(TypeError, match="schema must be a str"):
            Queue(schema=bad)


# --- declarations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "options", "error", "message"),
    [
        (("garbage",), {}, ValueError, "has 1 fields"),
        (("* * * *",), {}, ValueError, "has 4 fields"),
        (("* * * * * * *",), {}, ValueError, "has 7 fields"),
        (("",), {}, ValueError, "has 0 fields"),
        (("61 * * * *",), {}, ValueError, "not valid"),
        (("* 24 * * *",), {}, ValueError, "not valid"),
        (("0 0 32 * *",), {}, ValueError, "not valid"),
        (("0 0 1 13 *",), {}, ValueError, "not valid"),
        (("* * * * 8",), {}, ValueError, "not valid"),
        (("60 * * * * *",), {}, ValueError, "not valid"),
        (("*/0 * * * *",), {}, ValueError, "not valid"),
        (("0 0 30 2 *",), {}, ValueError, "not valid"),
        (("; drop table x * * * *",), {}, ValueError, "fields|not valid"),
        ((5,), {}, TypeError, "must be a str"),
        (("* * * * *",), {"timezone": "Mars/Olympus"}, ValueError, "unknown time zone"),
        (("* * * * *",), {"timezone": "../../etc/passwd"}, ValueError, "unknown time zone"),
        (("* * * * *",), {"timezone": ""}, ValueError, "unknown time zone"),
        (("* * * * *",), {"timezone": "UTC\x00"}, ValueError, "unknown time zone"),
        (("* * * * *",), {"timezone": 1}, TypeError, "timezone"),
        (("* * * * *",), {"missed": "never"}, ValueError, "missed must be"),
        (("* * * * *",), {"missed": None}, ValueError, "missed must be"),
        (("* * * * *",), {"catch_up_limit": 0}, ValueError, "catch_up_limit"),
        (("* * * * *",), {"catch_up_limit": True}, TypeError, "catch_up_limit"),
        (("* * * * *",), {"name": ""}, ValueError, "task name must not be empty"),
        (("* * * * *",), {"priority": 1.5}, TypeError, "priority"),
        (("* * * * *",), {"max_attempts": 0}, ValueError, "max_attempts"),
        (("* * * * *",), {"prority": 1}, TypeError, "prority"),
    ],
)
def test_bad_periodic_declarations_register_nothing(arguments, options, error, message):
    queue = Queue()
    with pytest.raises(error, match=message):
        queue.periodic(*arguments, **{"name": "p", **options})(lambda job: None)
    assert queue.schedules == {}
    assert queue.tasks == {}


def test_decorators_without_parentheses_are_refused():
    queue = Queue()
    with pytest.raises(TypeError, match="parentheses"):

        @queue.periodic  # type: ignore[arg-type]
        def refresh(job):
            return None

    with pytest.raises(TypeError, match="parentheses"):

        @queue.task  # type: ignore[arg-type]
        def send(job):
            return None

    assert queue.schedules == {}
    assert queue.tasks == {}


def test_a_periodic_name_taken_by_a_task_registers_nothing_more():
    queue = Queue()
    queue.task("taken")(lambda job: None)
    with pytest.raises(ValueError, match="already registered"):
        queue.periodic("* * * * *", name="taken")(lambda job: None)
    assert list(queue.tasks) == ["taken"]
    assert queue.schedules == {}


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_attempts": -1}, ValueError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts"),
        ({"priority": 32768}, ValueError, "priority"),
        ({"priority": False}, TypeError, "priority"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": math.nan}, ValueError, "timeout"),
        ({"queue": "q\x00"}, ValueError, "NUL"),
        ({"concurrency": True}, TypeError, "concurrency"),
        ({"rate_limit": (0, 1)}, ValueError, "at least 1"),
        ({"rate_limit": (1, 0)}, ValueError, "rate_limit period"),
    ],
)
def test_more_bad_task_options(options, error, message):
    queue = Queue()
    with pytest.raises(error, match=message):
        queue.task("t", **options)(lambda job: None)
    for bad_name in ("", "t" * 256, "t\x00", "\ud800", 5):
        with pytest.raises((TypeError, ValueError)):
            queue.task(bad_name)(lambda job: None)
    assert queue.tasks == {}


# --- the command line --------------------------------------------------------------------------


def _url(url) -> str:
    return url.render_as_string(hide_password=False)


CLI_CASES = [
    (["enqueue", "t", "{not json"], "not valid JSON"),
    (["enqueue", "t", "[1, 2"], "not valid JSON"),
    (["enqueue", "t", "Infinity"], "valid JSON"),
    (["enqueue", "t", '"\\ud800"'], "surrogate"),
    (["enqueue", "t", '{"a": "\\u0000"}'], "NUL"),
    (["enqueue", ""], "must not be empty"),
    (["enqueue", "t" * 256], "limit is 255"),
    (["enqueue", "t", "--priority", "32768"], "out of range"),
    (["enqueue", "t", "--priority", "1.5"], "not a valid integer"),
    (["enqueue", "t", "--priority", "true"], "not a valid integer"),
    (["enqueue", "t", "--delay", "-1"], "0 or more"),
    (["enqueue", "t", "--delay", "nan"], "finite"),
    (["enqueue", "t", "--delay", "soon"], "not a valid float"),
    (["enqueue", "t", "--max-attempts", "0"], "out of range"),
    (["enqueue", "t", "--max-attempts", "-3"], "out of range"),
    (["enqueue", "t", "--dedupe-key", ""], "dedupe_key must not be empty"),
    (["enqueue", "t", "--queue", ""], "queue name must not be empty"),
    (["enqueue", "t", "--queue", "a\x00"], "NUL"),
    (["jobs", "show", "0"], "0"),
    (["jobs", "show", "-1"], "-1"),
    (["jobs", "show", "abc"], "abc"),
    (["jobs", "show", str(2**63)], "range"),
    (["jobs", "show", "424242"], "no job with id 424242"),
    (["jobs", "cancel", "1.5"], "1.5"),
    (["jobs", "cancel", "424242"], "not queued or running"),
    (["jobs", "retry", "x'; --"], "x'; --"),
    (["jobs", "retry", "424242"], "not failed or cancelled"),
    (["queues", "pause", ""], "queue name must not be empty"),
    (["queues", "resume", "q" * 256], "limit is 255"),
    (["schedules", "enable", ""], "schedule name must not be empty"),
    (["schedules", "disable", "no.such"], "no schedule named 'no.such'"),
    (["schedules", "enable", SQL_TEXT], "no schedule named"),
    (["--schema", "public", "queues", "list"], "reserved"),
    (["--schema", "pg_catalog", "queues", "list"], "reserved"),
    (["--schema", "Pgq", "queues", "list"], "not allowed"),
    (["--schema", 'pgq"; drop schema pgq cascade; --', "enqueue", "t"], "not allowed"),
    (["--schema", "", "enqueue", "t"], "not allowed"),
    (["--schema", "a" * 64, "enqueue", "t"], "not allowed"),
    (["--schema", "nowhere", "enqueue", "t"], "pgq-sa db upgrade"),
    (["db", "grant"], "name a worker role, a producer role, or both"),
    (["db", "grant", "--worker", "public"], "reserved"),
    (["db", "grant", "--producer", ""], "1 to 63 bytes"),
    (["db", "grant", "--worker", "no_such_role_x'\"; --"], "does not exist"),
    (["run", "sample_app"], "MODULE:QUEUE"),
    (["run", ":queue"], "MODULE:QUEUE"),
    (["run", "no_such_module:queue"], "cannot import"),
    (["run", "sample_app:not_a_queue"], "not a pgq_sa.Queue"),
    (["run", "os:path"], "not a pgq_sa.Queue"),
    (["run", "sample_app:queue", "--threads", "0"], "0"),
    (["run", "sample_app:queue", "--queues", ","], "queue name must not be empty"),
    (["run", "sample_app:queue", "--async", "--threads", "2"], "exclude each other"),
    (["run", "sample_app:queue", "--heartbeat-interval", "20"], "lease_timeout"),
    (["run", "broken_app:queue"], "RuntimeError: broken on purpose"),
    (["run", "syntax_app:queue"], "SyntaxError"),
]


@pytest.fixture
def apps(tmp_path, monkeypatch):
    (tmp_path / "broken_app.py").write_text('raise RuntimeError("broken on purpose")\n')
    (tmp_path / "syntax_app.py").write_text("def f(:\n    pass\n")
    monkeypatch.syspath_prepend(APPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("args", "message"), CLI_CASES)
def test_cli_refuses_with_a_message(populated, shared_url, apps, args, message):
    before = snapshot(populated)
    result = CliRunner().invoke(
        cli, ["--database-url", _url(shared_url), *args], catch_exceptions=False
    )
    assert result.exit_code not in (0, None), result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert snapshot(populated) == before


NEEDS_THE_DATABASE = (
    "424242",
    "not queued or running",
    "not failed or cancelled",
    "no schedule named",
    "pgq-sa db upgrade",
    "does not exist",
)
BEFORE_THE_DATABASE = [
    (args, message)
    for args, message in CLI_CASES
    if not any(marker in message for marker in NEEDS_THE_DATABASE)
]


@pytest.mark.parametrize(("args", "message"), BEFORE_THE_DATABASE)
def test_cli_refuses_before_connecting(apps, args, message):
    """Pointed at a server that does not exist, these still get their own message: they were
    refused before any connection (let alone SQL) was attempted."""
    result = CliRunner().invoke(
        cli, ["--database-url", "postgresql://nobody@127.0.0.1:1/none", *args]
    )
    assert result.exit_code not in (0, None), result.output
    assert message in result.output
    assert "cannot reach" not in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "the database URL is empty"),
        ("not a url", "is not a database URL"),
        ("mysql://u@localhost/db", "needs PostgreSQL"),
        ("postgresql://u@localhost:port/db", "is not a database URL"),
        ("postgresql://nobody@127.0.0.1:1/none", "cannot reach the database"),
    ],
)
def test_cli_bad_database_url(url, message):
    for args in (["db", "current"], ["enqueue", "t", "{}"], ["jobs", "show", "1"]):
        result = CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output


def test_cli_sql_text_task_is_stored_verbatim(engine, database_url):
    result = CliRunner().invoke(
        cli,
        ["--database-url", _url(database_url), "enqueue", SQL_TEXT, json.dumps({"q": SQL_TEXT})],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    info = Queue().get(engine, int(result.output))
    assert (info.task, info.payload) == (SQL_TEXT, {"q": SQL_TEXT})


def _pgq_sa(*args: str, cwd: str | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "pgq_sa", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_real_processes_answer_with_a_message(populated, shared_url, tmp_path):
    (tmp_path / "broken_app.py").write_text('raise RuntimeError("broken on purpose")\n')
    url = _url(shared_url)
    before = snapshot(populated)
    for args, message in [
        (["--database-url", url, "enqueue", "t", "{bad"], "not valid JSON"),
        (["--database-url", url, "--schema", "x;drop", "enqueue", "t"], "not allowed"),
        (["--database-url", url, "run", "broken_app:queue"], "broken on purpose"),
    ]:
        done = _pgq_sa(*args, cwd=str(tmp_path), env={"PYTHONPATH": str(tmp_path)})
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
    assert snapshot(populated) == before


def test_run_against_an_unreachable_database_says_so_and_stops_on_sigterm():
    """A worker started before its database keeps retrying (the database may be starting) and
    says why; one SIGTERM ends it. Thread and async workers, side by side."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgq_sa",
                "--database-url",
                "postgresql://nobody@127.0.0.1:1/none",
                "run",
                "sample_app:queue",
                *mode,
            ],
            cwd=APPS,
            env={**os.environ, "PYTHONPATH": APPS},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for mode in ([], ["--async"])
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            first = process.stdout.readline()  # blocks until the worker reports the failure
            assert "register failed" in first, first
            assert "127.0.0.1" in first, first
            process.send_signal(signal.SIGTERM)
        for process in processes:
            started = time.monotonic()
            rest, _ = process.communicate(timeout=30)
            assert time.monotonic() - started < 10
            assert "Traceback" not in rest
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
