"""Security: notifications never carry job data, and the documented least-privilege roles work
(the owner migrates, workers run under the worker role, producers under the producer role) while
the producer role is refused, by PostgreSQL itself, what it must not do."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anyio
import psycopg
import pytest
from click.testing import CliRunner
from helpers import until_awaited
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ProgrammingError

from pgq_sa import (
    AsyncWorker,
    Job,
    JobSpec,
    JobStatus,
    Queue,
    ThreadWorker,
    Workflow,
    WorkflowStatus,
)
from pgq_sa import _roles as roles
from pgq_sa._cli import cli
from pgq_sa._config import make_engine
from pgq_sa._notifications import conninfo
from pgq_sa._schema import finished_channel, notify_channel
from pgq_sa.migrations import db_upgrade


def _drain(
    connection: psycopg.Connection, seconds: float, stop_after: int | None = None
) -> list[str]:
    return [n.payload for n in connection.notifies(timeout=seconds, stop_after=stop_after)]


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_notifications_never_carry_job_data(engine, database_url):
    """Listen on both channels of the schema through a whole life cycle (enqueue, bulk enqueue,
    claim, success with a result, failure with an error, retry, cancel of a running job): every
    notification names tasks, queues or ids, never the payload, result, error or dedupe key."""
    secret = "s3cret-" + secrets.token_hex(16)
    queue = Queue()
    started = threading.Event()
    release = threading.Event()

    @queue.task("sec.echo")
    def echo(job: Job) -> object:
        return {"echo": job.payload}

    @queue.task("sec.fail", max_attempts=1)
    def fail(job: Job) -> None:
        raise RuntimeError(f"failed with {job.payload['secret']}")

    @queue.task("sec.block")
    def block(job: Job) -> None:
        started.set()
        release.wait(30)

    listener = psycopg.connect(conninfo(database_url), autocommit=True)
    heard: list[str] = []
    try:
        for channel in (notify_channel("pgq"), finished_channel("pgq")):
            listener.execute(f'LISTEN "{channel}"')
        ok = queue.enqueue(engine, "sec.echo", {"secret": secret}, dedupe_key=secret)
        failing = queue.enqueue(engine, "sec.fail", {"secret": secret})
        queue.enqueue_many(engine, [JobSpec("sec.echo", {"bulk": secret}) for _ in range(3)])
        blocked = queue.enqueue(engine, "sec.block", {"secret": secret})
        worker = ThreadWorker(queue, engine, threads=4, poll_interval=0.1)
        runner = threading.Thread(target=worker.run)
        runner.start()
        try:
            assert started.wait(30), "the blocking job never started"
            with ThreadPoolExecutor(1) as pool:  # a waiter, so its end is announced too
                waiter = pool.submit(queue.wait, engine, blocked, 30)
                until_awaited(engine, blocked)
                assert queue.cancel(engine, blocked)
                release.set()
                assert waiter.result(30).cancel_requested
            assert queue.wait(engine, ok, timeout=30).result == {"echo": {"secret": secret}}
            assert secret in queue.wait(engine, failing, timeout=30).error.message
            assert queue.retry(engine, failing)
            assert queue.wait(engine, failing, timeout=30).status is JobStatus.failed
        finally:
            release.set()
            worker.stop()
            runner.join(30)
        heard = _drain(listener, 0.5)
    finally:
        listener.close()
    reasons = " ".join(heard)
    assert len(heard) >= 6, heard  # inserts, retry, cancel, finished ids ...
    assert "sec.echo" in reasons
    assert "cancel" in reasons
    assert '"ids"' in reasons
    assert not [payload for payload in heard if secret in payload]


# --- least-privilege roles ---------------------------------------------------------------------


@dataclass
class Roles:
    admin: URL
    owner: URL
    worker: URL
    producer: URL
    worker_name: str
    producer_name: str


@pytest.fixture
def roles_db(admin_engine: Engine, empty_database_url: URL) -> Iterator[Roles]:
    """Three LOGIN roles with random names (roles are cluster-wide) on a fresh, empty database;
    dropped afterwards, whatever happened."""
    suffix = secrets.token_hex(4)
    password = secrets.token_hex(12)
    names = {kind: f"pgq_sa_test_{kind}_{suffix}" for kind in ("owner", "worker", "producer")}
    database = empty_database_url.database
    with admin_engine.connect() as connection:
        for name in names.values():
            connection.exec_driver_sql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        connection.exec_driver_sql(f'GRANT CREATE ON DATABASE "{database}" TO "{names["owner"]}"')
    urls = {
        kind: empty_database_url.set(username=name, password=password)
        for kind, name in names.items()
    }
    try:
        yield Roles(
            empty_database_url,
            urls["owner"],
            urls["worker"],
            urls["producer"],
            names["worker"],
            names["producer"],
        )
    finally:
        quoted = ", ".join(f'"{name}"' for name in names.values())
        in_database = make_engine(empty_database_url, isolation_level="AUTOCOMMIT")
        try:
            with in_database.connect() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE usename = ANY(:names)"
                    ),
                    {"names": list(names.values())},
                )
                connection.exec_driver_sql(f"DROP OWNED BY {quoted} CASCADE")
        finally:
            in_database.dispose()
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {quoted}")


def _sample_queue(ran: list[str]) -> Queue:
    queue = Queue(keep_succeeded=3600.0)  # prunes the day-old job, not the ones just run

    @queue.task("app.work")
    def work(job: Job) -> int:
        ran.append("work")
        return int(job.payload["n"]) * 2

    @queue.task("app.limited", concurrency=1, rate_limit="100/s")
    async def limited(job: Job) -> None:
        ran.append("limited")

    @queue.periodic("* * * * * *", name="app.tick")
    def tick(job: Job) -> None:
        ran.append("tick")

    return queue


def _denied(engine: Engine, statement: str) -> str:
    with pytest.raises(ProgrammingError) as raised, engine.begin() as connection:
        connection.execute(text(statement))
    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege), raised.value
    return str(raised.value.orig)


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_least_privilege_roles(roles_db, kind, caplog):
    caplog.set_level(logging.WARNING, logger="pgq_sa")
    owner = make_engine(roles_db.owner)
    worker_engine = make_engine(roles_db.worker)
    producer = make_engine(roles_db.producer)
    admin = make_engine(roles_db.admin)
    ran: list[str] = []
    queue = _sample_queue(ran)
    try:
        db_upgrade(owner)
        if kind == "thread":
            roles.grant(owner, worker=roles_db.worker_name, producer=roles_db.producer_name)
        else:  # the same through the command line
            owner_url = roles_db.owner.render_as_string(hide_password=False)
            arguments = ["--database-url", owner_url, "db", "grant"]
            arguments += ["--worker", roles_db.worker_name, "--producer", roles_db.producer_name]
            result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            assert "privileges granted" in result.output

        # The producer enqueues, and its insert still wakes listeners (the trigger runs as it).
        listener = psycopg.connect(conninfo(roles_db.worker), autocommit=True)
        listener.execute(f'LISTEN "{notify_channel("pgq")}"')
        ids = [queue.enqueue(producer, "app.work", {"n": n}) for n in range(5)]
        ids += queue.enqueue_many(producer, [JobSpec("app.limited", {"n": 1}) for _ in range(3)])
        kept = queue.enqueue(producer, "app.work", {"n": 7}, dedupe_key="once")
        assert queue.enqueue(producer, "app.work", {"n": 7}, dedupe_key="once") == kept
        doomed = queue.enqueue(producer, "app.work", {"n": 0}, delay=3600)
        assert queue.cancel(producer, doomed)
        assert queue.get(producer, doomed).status is JobStatus.cancelled
        # Workflows: enqueue, cancel a waiting step (its dependents settle), cancel a workflow.
        flow = Workflow("roles")
        flow.add("app.work", {"n": 4}, after=[flow.add("app.work", {"n": 3})])
        workflow_id = queue.enqueue_workflow(producer, flow)
        doomed_flow = Workflow()
        head = doomed_flow.add("app.work", {"n": 0}, delay=3600)
        doomed_flow.add("app.work", {"n": 0}, after=[head])
        doomed_flow.add("app.work", {"n": 0}, after=[doomed_flow.add("app.work", {"n": 0})])
        doomed_workflow = queue.enqueue_workflow(producer, doomed_flow)
        steps = queue.get_workflow(producer, doomed_workflow).steps
        assert queue.cancel(producer, steps[2].id)  # waiting: cancels steps[3] in cascade
        assert queue.cancel_workflow(producer, doomed_workflow) == 2
        assert queue.get_workflow(producer, doomed_workflow).status is WorkflowStatus.cancelled
        heard = _drain(listener, 30.0, stop_after=1)  # the first insert's, delivered at commit
        listener.close()
        assert any("app.work" in message for message in heard), heard

        # A dead worker's job (to be rescued) and an old finished job (to be pruned), as admin.
        with admin.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO pgq.workers (id, name, kind, hostname, pid, tasks, concurrency, "
                    "heartbeat_at) VALUES ('00000000-0000-0000-0000-000000000001', 'dead', "
                    "'thread', 'h', 1, ARRAY['app.work'], 1, now() - interval '1 hour')"
                )
            )
            rescued = connection.execute(
                text(
                    "INSERT INTO pgq.jobs (task, payload, state, attempt, worker_id, started_at) "
                    "VALUES ('app.work', '{\"n\": 1}', 'running', 1, "
                    "'00000000-0000-0000-0000-000000000001', now()) RETURNING id"
                )
            ).scalar_one()
            pruned = connection.execute(
                text(
                    "INSERT INTO pgq.jobs (task, state, finished_at) "
                    "VALUES ('app.work', 'succeeded', now() - interval '1 day') RETURNING id"
                )
            ).scalar_one()

        # A worker under the worker role runs everything: claims (plain and limited), finishes,
        # heartbeats, rescue, pruning, schedules.
        options = {"heartbeat_interval": 0.2, "lease_timeout": 30.0, "poll_interval": 0.1}
        if kind == "thread":
            worker = ThreadWorker(queue, worker_engine, threads=4, **options)
            runner = threading.Thread(target=worker.run)
        else:
            worker = AsyncWorker(queue, roles_db.worker, concurrency=4, **options)
            runner = threading.Thread(target=anyio.run, args=(worker.run,))
        runner.start()
        try:
            for job_id in [*ids, kept, rescued]:
                assert queue.wait(producer, job_id, timeout=60).status is JobStatus.succeeded
            assert queue.get(producer, ids[0]).result == 0
            done = queue.wait_workflow(producer, workflow_id, timeout=60)
            assert [step.result for step in done.steps] == [6, 8]
            assert queue.retry_workflow(worker_engine, doomed_workflow) == 0  # none failed
            _until(lambda: queue.get(producer, pruned) is None, "the old job to be pruned")
            _until(lambda: "tick" in ran, "a periodic job to run")
            queue.pause(worker_engine, "default")  # operators use the worker role
            queue.resume(worker_engine, "default")
        finally:
            worker.stop()
            runner.join(60)
        assert not runner.is_alive()
        problems = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("pgq_sa") and not r.getMessage().startswith("rescued the jobs")
        ]
        assert problems == []  # no statement of the worker was refused (they would be retried)

        # What the producer must not do, refused by PostgreSQL.
        assert "jobs" in _denied(producer, "DELETE FROM pgq.jobs")
        _denied(producer, "TRUNCATE pgq.jobs")
        _denied(producer, "UPDATE pgq.jobs SET payload = '{}'")
        _denied(producer, "UPDATE pgq.jobs SET result = '1', state = 'succeeded'")
        _denied(
            producer,
            "INSERT INTO pgq.jobs (task, state, attempt, worker_id) "
            "VALUES ('x', 'running', 1, gen_random_uuid())",
        )
        assert "workers" in _denied(producer, "UPDATE pgq.workers SET heartbeat_at = now()")
        _denied(producer, "SELECT * FROM pgq.workers")
        _denied(producer, "DELETE FROM pgq.schedules")
        _denied(producer, "UPDATE pgq.task_limits SET concurrency = 1000")
        _denied(producer, "CREATE TABLE pgq.evil (id int)")
        _denied(producer, "DROP TABLE pgq.jobs")
        _denied(producer, "ALTER TABLE pgq.jobs DISABLE TRIGGER ALL")
        with pytest.raises(ProgrammingError, match="permission denied"):
            queue.pause(producer, "default")
        with pytest.raises(ProgrammingError, match="permission denied"):
            queue.retry(producer, doomed)
        # Nor may workers change the schema.
        _denied(worker_engine, "CREATE TABLE pgq.evil (id int)")
        _denied(worker_engine, "DROP TABLE pgq.jobs")
    finally:
        for engine in (owner, worker_engine, producer, admin):
            engine.dispose()


def test_a_producer_granted_before_step_0003_still_waits_by_polling(roles_db, caplog):
    """Grants made before ``jobs.awaited`` existed lack UPDATE on it: wait() cannot flag the
    job, says so, and still returns once the job is done (its once-a-second re-read)."""
    caplog.set_level(logging.WARNING, logger="pgq_sa.wait")
    owner = make_engine(roles_db.owner)
    producer = make_engine(roles_db.producer)
    queue = Queue()

    @queue.task("app.work")
    def work(job: Job) -> int:
        return 1

    try:
        db_upgrade(owner)
        roles.grant(owner, producer=roles_db.producer_name)
        with owner.begin() as connection:
            connection.exec_driver_sql(
                f'REVOKE UPDATE (awaited) ON pgq.jobs FROM "{roles_db.producer_name}"'
            )
        job_id = queue.enqueue(producer, "app.work")
        worker = ThreadWorker(queue, owner, threads=2, poll_interval=0.1)
        runner = threading.Thread(target=worker.run)
        runner.start()
        try:
            assert queue.wait(producer, job_id, timeout=30).status is JobStatus.succeeded
        finally:
            worker.stop()
            runner.join(60)
        warnings = [r.getMessage() for r in caplog.records if r.name == "pgq_sa.wait"]
        assert any("cannot flag the job awaited" in w and "db grant" in w for w in warnings), (
            warnings
        )
    finally:
        owner.dispose()
        producer.dispose()


def test_grant_script_and_role_names():
    script = roles.grant_script("pgq_app", worker='we"ird', producer="App Producer")
    assert 'GRANT USAGE ON SCHEMA "pgq_app" TO "we""ird";' in script
    assert (
        "GRANT INSERT (id, task, queue, payload, priority, max_attempts, run_at, dedupe_key, meta, "
        "workflow_id, state, waiting_for, on_upstream_failure, awaited) "
        'ON TABLE pgq_app.jobs TO "App Producer";'
    ) in script
    assert "DELETE" not in script.split('"App Producer"', 1)[1]
    for bad in ("", "public", "PUBLIC", "pg_monitor", "a\x00", "x" * 64):
        with pytest.raises(ValueError, match="role"):
            roles.grant_statements(worker=bad)
    with pytest.raises(TypeError, match="role"):
        roles.grant_statements(producer=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name a worker role"):
        roles.grant_statements()
    with pytest.raises(ValueError, match="schema"):
        roles.grant_statements("Bad; drop", worker="w")


# --- no SQL from user strings ------------------------------------------------------------------


def _sql_texts(schema: str) -> dict[str, str]:
    """The SQL text of every statement of a schema's Statements, nested groups included."""
    from dataclasses import fields, is_dataclass

    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    texts: dict[str, str] = {}

    def collect(name: str, value: object) -> None:
        if is_dataclass(value):
            for field in fields(value):
                if field.name != "tables":
                    collect(f"{name}.{field.name}", getattr(value, field.name))
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(f"{name}[{key}]", item)
        else:
            texts[name] = str(value.compile(dialect=dialect))  # type: ignore[attr-defined]

    collect("statements", Queue(schema=schema).statements)
    return texts


def test_the_schema_is_the_only_input_in_sql_text():
    """Every statement is built once per schema; rebuilt for another schema, only the schema's
    name changes in its text: no other input ever becomes SQL."""
    ours, theirs = _sql_texts("pgq"), _sql_texts("zz_other_queue")
    assert ours.keys() == theirs.keys()
    for name, sql in ours.items():
        assert theirs[name].replace("zz_other_queue", "pgq") == sql, name


def test_hostile_values_travel_as_parameters(engine):
    """What a caller passes is sent as bind parameters; the statement text never contains it."""
    from sqlalchemy import event

    sent: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    queue = Queue()
    hostile = "x'); drop table pgq.jobs; --"
    event.listen(engine, "before_cursor_execute", record)
    try:
        job_id = queue.enqueue(engine, hostile, {hostile: hostile}, dedupe_key=hostile)
        queue.enqueue_many(engine, [JobSpec(hostile, queue=hostile)])
        queue.get(engine, job_id)
        queue.cancel(engine, job_id)
        queue.pause(engine, hostile)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sent
    assert not [statement for statement, _ in sent if "drop table" in statement]
    assert any(hostile in str(parameters) for _, parameters in sent)
    assert queue.get(engine, job_id).task == hostile


def test_the_demo_refuses_a_hostile_schema_before_dropping_anything(engine):
    from pgq_sa._cli.demo import run_demo

    for name in ('pgq" CASCADE; DROP SCHEMA pgq CASCADE; --', "public", "PGQ"):
        with pytest.raises(ValueError, match="schema"):
            run_demo(engine, name, 1)
    assert Queue().enqueue(engine, "still.there") >= 1
