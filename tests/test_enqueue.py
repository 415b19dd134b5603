"""Producer API on sync binds: transactions, bulk, dedupe, get/cancel/retry, pause/resume."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from helpers import count_jobs
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from pgq_sa import JobSpec, JobStatus, Queue
from pgq_sa._schema import notify_channel


@pytest.fixture
def queue() -> Queue:
    return Queue()


def _listener(url: URL, channel: str) -> psycopg.Connection:
    connection = psycopg.connect(
        url.set(drivername="postgresql").render_as_string(False), autocommit=True
    )
    connection.execute(f'LISTEN "{channel}"')
    return connection


def _notifications(connection: psycopg.Connection, timeout: float) -> list[str]:
    return [n.payload for n in connection.notifies(timeout=timeout, stop_after=1)]


def test_session_commit_stores_job_and_wakes_listeners(queue, engine, database_url):
    listener = _listener(database_url, notify_channel("pgq"))
    with Session(engine) as session:
        job_id = queue.enqueue(session, "emails.send", {"to": "a@example.com"})
        assert _notifications(listener, 0.2) == []  # nothing before commit
        session.commit()
    (message,) = _notifications(listener, 5)
    assert json.loads(message)["tasks"] == ["emails.send"]
    assert "a@example.com" not in message
    info = queue.get(engine, job_id)
    assert info is not None
    assert info.status is JobStatus.queued
    assert info.payload == {"to": "a@example.com"}
    assert (info.task, info.queue, info.priority, info.attempts) == ("emails.send", "default", 0, 0)
    listener.close()


def test_session_rollback_leaves_no_job_and_no_wakeup(queue, engine, database_url):
    listener = _listener(database_url, notify_channel("pgq"))
    with Session(engine) as session:
        job_id = queue.enqueue(session, "emails.send", {"to": "x"})
        session.rollback()
    assert queue.get(engine, job_id) is None
    assert count_jobs(engine) == 0
    assert _notifications(listener, 0.5) == []
    listener.close()


def test_job_joins_the_callers_data_transaction(queue, engine):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY)"))
    maker = sessionmaker(engine)
    with maker() as session:
        session.execute(text("INSERT INTO orders VALUES (1)"))
        queue.enqueue(session, "orders.confirm", {"order": 1})
        session.rollback()  # the request failed
    with maker.begin() as session:
        session.execute(text("INSERT INTO orders VALUES (2)"))
        queue.enqueue(session, "orders.confirm", {"order": 2})
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM orders")).scalars().all() == [2]
    assert count_jobs(engine) == 1


def test_connection_bind_uses_the_callers_transaction(queue, engine):
    with engine.connect() as connection:
        queue.enqueue(connection, "a")
        connection.rollback()
        queue.enqueue(connection, "b")
        connection.commit()
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT task FROM pgq.jobs")).scalars().all()
    assert rows == ["b"]


def test_engine_bind_commits_on_its_own(queue, engine):
    job_id = queue.enqueue(engine, "reports.build", [1, 2, 3], priority=5, delay=60)
    info = queue.get(engine, job_id)
    assert info.priority == 5
    assert info.payload == [1, 2, 3]
    assert info.run_at - info.created_at >= timedelta(seconds=59)


def test_run_at_is_stored_exactly(queue, engine):
    when = datetime(2031, 3, 4, 5, 6, 7, 123456, tzinfo=timezone(timedelta(hours=2)))
    job_id = queue.enqueue(engine, "later", run_at=when)
    assert queue.get(engine, job_id).run_at == when


def test_task_defaults_apply_and_explicit_options_win(queue, engine):
    @queue.task("images.resize", priority=7, queue="media", max_attempts=3)
    def resize(job):
        return None

    first = queue.get(engine, queue.enqueue(engine, "images.resize"))
    assert (first.priority, first.queue, first.max_attempts) == (7, "media", 3)
    second = queue.get(
        engine, queue.enqueue(engine, "images.resize", priority=-1, queue="bulk", max_attempts=9)
    )
    assert (second.priority, second.queue, second.max_attempts) == (-1, "bulk", 9)


def test_enqueue_many_returns_ids_in_order_in_one_statement(queue, engine, database_url):
    listener = _listener(database_url, notify_channel("pgq"))
    specs = [JobSpec("bulk.item", {"n": n}, priority=n % 3) for n in range(5000)]
    statements: list[str] = []

    from sqlalchemy import event

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    ids = queue.enqueue_many(engine, specs)
    event.remove(engine, "before_cursor_execute", count)
    assert len([s for s in statements if "INSERT" in s]) == 1
    assert len(ids) == 5000
    assert len(set(ids)) == 5000
    with engine.connect() as connection:
        stored = dict(connection.execute(text("SELECT id, payload->>'n' FROM pgq.jobs")).all())
    assert [int(stored[job_id]) for job_id in ids] == list(range(5000))
    # one NOTIFY for the whole statement
    assert len(list(listener.notifies(timeout=1))) == 1
    listener.close()


def test_enqueue_many_empty_is_a_no_op(queue, engine):
    assert queue.enqueue_many(engine, []) == []
    assert count_jobs(engine) == 0


def test_dedupe_key_returns_the_live_holder(queue, engine):
    first = queue.enqueue(engine, "sync.account", {"id": 1}, dedupe_key="account-1")
    again = queue.enqueue(engine, "sync.account", {"id": 1}, dedupe_key="account-1")
    other = queue.enqueue(engine, "sync.account", {"id": 2}, dedupe_key="account-2")
    assert again == first
    assert other != first
    assert count_jobs(engine) == 2


def test_dedupe_inside_one_batch_and_against_stored_jobs(queue, engine):
    held = queue.enqueue(engine, "t", dedupe_key="k0")
    ids = queue.enqueue_many(
        engine, [JobSpec("t", {"n": n}, dedupe_key=f"k{n % 3}") for n in range(9)]
    )
    assert ids[0] == ids[3] == ids[6] == held
    assert ids[1] == ids[4] == ids[7]
    assert ids[2] == ids[5] == ids[8]
    assert count_jobs(engine) == 3


def test_finished_jobs_do_not_hold_their_dedupe_key(queue, engine):
    first = queue.enqueue(engine, "t", dedupe_key="once")
    assert queue.cancel(engine, first)
    second = queue.enqueue(engine, "t", dedupe_key="once")
    assert second != first


def test_concurrent_enqueues_with_one_dedupe_key_make_one_job(queue, engine):
    maker = sessionmaker(engine)
    barrier = threading.Barrier(16)
    results: list[int] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with maker.begin() as session:
                barrier.wait()
                results.append(queue.enqueue(session, "t", dedupe_key="shared"))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=produce) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert count_jobs(engine) == 1


def test_cancel_queued_job(queue, engine):
    job_id = queue.enqueue(engine, "t")
    assert queue.cancel(engine, job_id) is True
    info = queue.get(engine, job_id)
    assert info.status is JobStatus.cancelled
    assert info.finished_at is not None
    assert queue.cancel(engine, job_id) is False
    assert queue.cancel(engine, 987654321) is False


def test_retry_requeues_cancelled_job_only(queue, engine):
    job_id = queue.enqueue(engine, "t")
    assert queue.retry(engine, job_id) is False  # queued: nothing to retry
    queue.cancel(engine, job_id)
    assert queue.retry(engine, job_id) is True
    info = queue.get(engine, job_id)
    assert info.status is JobStatus.queued
    assert info.finished_at is None


def test_retry_refused_while_another_live_job_holds_the_key(queue, engine):
    first = queue.enqueue(engine, "t", dedupe_key="k")
    queue.cancel(engine, first)
    second = queue.enqueue(engine, "t", dedupe_key="k")
    assert queue.retry(engine, first) is False
    assert queue.get(engine, second).status is JobStatus.queued


def test_pause_and_resume_are_stored(queue, engine):
    queue.pause(engine, "media")
    queue.pause(engine, "media")
    with engine.connect() as connection:
        row = connection.execute(text("SELECT paused, paused_at FROM pgq.queues")).one()
    assert row.paused is True
    assert row.paused_at is not None
    queue.resume(engine, "media")
    with engine.connect() as connection:
        row = connection.execute(text("SELECT paused, paused_at FROM pgq.queues")).one()
    assert row.paused is False
    assert row.paused_at is None


def test_async_bind_on_sync_method_is_refused_before_sql(queue, database_url):
    from pgq_sa._config import make_async_engine

    async_engine = make_async_engine(database_url)
    with pytest.raises(TypeError, match="_async"):
        queue.enqueue(async_engine, "t")
    with pytest.raises(TypeError, match="Session, Connection or Engine"):
        queue.enqueue("postgresql://nowhere", "t")


def test_queue_in_another_schema_does_not_mix(engine):
    from pgq_sa.migrations import db_upgrade

    db_upgrade(engine, schema="other_queue")
    default, other = Queue(), Queue(schema="other_queue")
    default.enqueue(engine, "a")
    other.enqueue_many(engine, [JobSpec("b"), JobSpec("c")])
    assert count_jobs(engine) == 1
    assert count_jobs(engine, schema="other_queue") == 2
