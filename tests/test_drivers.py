"""Every PostgreSQL driver SQLAlchemy applications run: psycopg2, pg8000, psycopg (sync and async)
and asyncpg. For each: enqueue joins the caller's transaction (rollback removes the job), and a
worker given an engine of that driver runs jobs. Driver options in a URL never reach libpq (the
workers' LISTEN connection, the sync engine pgq_sa makes from a URL written for another driver).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import collect_pg8000_leftovers, count_jobs, driver_url
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from pgq_sa import AsyncWorker, JobStatus, Queue, ThreadWorker
from pgq_sa._config import async_url, asyncpg_connect_args, make_async_engine, sync_url
from pgq_sa._notifications import ListenConnection, conninfo

SYNC_DRIVERS = ["psycopg2", "pg8000", "psycopg"]
ASYNC_DRIVERS = ["asyncpg", "psycopg"]
APPS = str(Path(__file__).parent / "apps")


@pytest.fixture(autouse=True)
def _pg8000_leftovers(request):
    yield
    if "pg8000" in request.node.name:
        collect_pg8000_leftovers()


def _queue() -> Queue:
    queue = Queue()

    @queue.task("drivers.echo")
    def echo(job):
        return {"echo": job.payload}

    @queue.task("drivers.async_echo")
    async def async_echo(job):
        return {"echo": job.payload}

    return queue


@pytest.fixture(params=SYNC_DRIVERS)
def driver_engine(request, database_url):
    engine = create_engine(driver_url(database_url, request.param))
    yield engine
    engine.dispose()


@pytest.fixture(params=ASYNC_DRIVERS)
def async_driver_url(request, database_url):
    return driver_url(database_url, request.param)


# --- enqueue in the caller's transaction ---------------------------------------------------------


def test_enqueue_joins_the_session_transaction(driver_engine, engine):
    queue = _queue()
    with Session(driver_engine) as session:
        queue.enqueue(session, "drivers.echo", {"n": 1})
        session.rollback()
    assert count_jobs(engine) == 0
    with Session(driver_engine) as session:
        job_id = queue.enqueue(session, "drivers.echo", {"n": 2})
        assert queue.get(session, job_id).status is JobStatus.queued  # seen inside the transaction
        session.commit()
    assert queue.get(engine, job_id).payload == {"n": 2}


def test_enqueue_joins_the_async_session_transaction(async_driver_url, engine):
    queue = _queue()

    async def main():
        async_engine = create_async_engine(async_driver_url)
        try:
            async with AsyncSession(async_engine) as session:
                await queue.enqueue_async(session, "drivers.echo", {"n": 1})
                await session.rollback()
            async with AsyncSession(async_engine) as session:
                job_id = await queue.enqueue_async(session, "drivers.echo", {"n": 2})
                await session.commit()
            return job_id
        finally:
            await async_engine.dispose()

    job_id = anyio.run(main, backend="asyncio")
    assert count_jobs(engine) == 1
    assert queue.get(engine, job_id).payload == {"n": 2}


# --- workers given an engine of each driver ------------------------------------------------------


def _enqueue_both(queue, engine):
    return [
        queue.enqueue(engine, "drivers.echo", {"n": 1}),
        queue.enqueue(engine, "drivers.async_echo", {"n": 2}),
    ]


def _all_succeeded(queue, engine, ids):
    return [queue.get(engine, job_id).status for job_id in ids] == [JobStatus.succeeded] * 2


def test_thread_worker_on_an_engine_of_each_driver(driver_engine, engine):
    queue = _queue()
    ids = _enqueue_both(queue, engine)
    ThreadWorker(queue, driver_engine, threads=2, poll_interval=0.2).run(until_empty=True)
    assert _all_succeeded(queue, engine, ids)
    assert queue.get(engine, ids[0]).result == {"echo": {"n": 1}}


def test_async_worker_on_trio_with_a_sync_engine_of_each_driver(driver_engine, engine):
    queue = _queue()
    ids = _enqueue_both(queue, engine)
    worker = AsyncWorker(queue, driver_engine, concurrency=2, poll_interval=0.2)
    anyio.run(lambda: worker.run(until_empty=True), backend="trio")
    assert _all_succeeded(queue, engine, ids)


def test_async_worker_on_an_async_engine_of_each_driver(async_driver_url, engine):
    queue = _queue()
    ids = _enqueue_both(queue, engine)

    async def main():
        async_engine = create_async_engine(async_driver_url)
        try:
            worker = AsyncWorker(queue, async_engine, concurrency=2, poll_interval=0.2)
            await worker.run(until_empty=True)
        finally:
            await async_engine.dispose()

    anyio.run(main, backend="asyncio")
    assert _all_succeeded(queue, engine, ids)


# --- driver options in URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+asyncpg://u:p%40ss@db.example:6543/app?ssl=require"
            "&prepared_statement_cache_size=0",
            {"host": "db.example", "port": "6543", "user": "u", "password": "p@ss",
             "dbname": "app", "sslmode": "require"},
        ),
        ("postgresql+asyncpg://u@h/app?ssl=true", {"sslmode": "require"}),
        ("postgresql+asyncpg://u@h/app?ssl=disable&sslmode=verify-full",
         {"sslmode": "verify-full"}),
        ("postgresql+psycopg2://u@h/app?sslmode=verify-full&sslrootcert=/etc/ca.pem",
         {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}),
        ("postgresql://u@h/app?application_name=billing&prepared_statement_cache_size=100",
         {"application_name": "billing"}),
        ("postgresql+pg8000://u@h/app?timeout=10", {"host": "h", "dbname": "app"}),
        ("postgresql+psycopg://u@/app?host=/run/postgresql", {"host": "/run/postgresql"}),
        ("postgresql+psycopg://u@/app?host=a:5432&host=b:5433",
         {"host": "a,b", "port": "5432,5433"}),
    ],
)  # fmt: skip
def test_listener_conninfo_keeps_only_what_libpq_understands(url, expected):
    params = conninfo_to_dict(conninfo(url))
    assert expected.items() <= params.items()
    assert not {"ssl", "prepared_statement_cache_size", "timeout"} & params.keys()


def test_sync_url_for_another_driver_keeps_only_libpq_options():
    url = sync_url("postgresql+asyncpg://u@h/app?ssl=disable&prepared_statement_cache_size=0")
    assert (url.drivername, dict(url.query)) == ("postgresql+psycopg", {"sslmode": "disable"})
    mine = "postgresql+psycopg://u@h/app?sslmode=require&application_name=x"
    assert sync_url(mine).query == {"sslmode": "require", "application_name": "x"}


def test_asyncpg_url_leaves_libpq_only_options_to_connect_args():
    given = "postgresql://u@h/app?sslmode=require&application_name=x&connect_timeout=5"
    assert dict(async_url(given).query) == {"ssl": "require"}
    assert asyncpg_connect_args(given) == {
        "server_settings": {"application_name": "x"},
        "timeout": 5.0,
    }


def _options(database_url, **query):
    return database_url.set(drivername="postgresql+asyncpg").update_query_dict(query)


def test_listen_connection_with_driver_options_in_the_url(database_url, engine):
    url = _options(
        database_url, ssl="disable", prepared_statement_cache_size="0", application_name="pgq_l"
    )
    listener = ListenConnection(url, ["pgq_sa.pgq"])
    listener.connect()
    try:
        with engine.connect() as connection:
            names = connection.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                )
            ).scalars()
            assert list(names) == ["pgq_l"]
    finally:
        listener.close()


def test_async_engine_and_worker_with_application_name(database_url, engine):
    queue = _queue()
    ids = _enqueue_both(queue, engine)
    url = _options(database_url, application_name="pgq_worker", prepared_statement_cache_size="0")

    async def main():
        async_engine = make_async_engine(url)
        try:
            async with async_engine.connect() as connection:
                name = await connection.scalar(text("SELECT current_setting('application_name')"))
        finally:
            await async_engine.dispose()
        await AsyncWorker(queue, url, concurrency=2, poll_interval=0.2).run(until_empty=True)
        return name

    assert anyio.run(main, backend="asyncio") == "pgq_worker"
    assert _all_succeeded(queue, engine, ids)


@pytest.mark.parametrize("mode", [[], ["--async"]])
def test_cli_run_with_driver_options_in_the_url(database_url, engine, mode):
    ids = [Queue().enqueue(engine, "sample.sleep", {"seconds": 0}) for _ in range(2)]
    url = _options(database_url, application_name="x", ssl="disable")
    rendered = url.render_as_string(hide_password=False)
    process = subprocess.run(
        [sys.executable, "-m", "pgq_sa", "--database-url", rendered, "run", "sample_app:queue",
         "--poll-interval", "0.2", "--until-empty", *mode],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": APPS},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout + process.stderr
    assert all(Queue().get(engine, i).status is JobStatus.succeeded for i in ids)
