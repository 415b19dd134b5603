"""What each durability level keeps when PostgreSQL crashes (its postmaster killed with SIGKILL,
crash recovery on the way up), on an embedded server this test owns.

* ``balanced``: claims and heartbeats commit without waiting for the WAL flush, outcomes and
  enqueues do wait. So an outcome written just before the crash survives it, and a crash in the
  middle of a drain loses no job: a claim lost with the crash leaves its job queued, and it runs
  again (at least once, as always).
* ``volatile``: the queue's tables are UNLOGGED, so a crash empties them, as documented; the
  queue works again at once.
"""

from __future__ import annotations

import threading

import pytest
from fault_injectors import kill_server, own_server
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from pgq_sa import JobSpec, Queue, ThreadWorker
from pgq_sa._config import make_engine
from pgq_sa.migrations import db_upgrade, read_durability, set_durability

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _states(engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT state, count(*) FROM pgq.jobs GROUP BY state"))
        return {state: count for state, count in rows}


def _until(predicate, what: str, timeout: float = 60.0, every: float = 0.01) -> None:
    waited = threading.Event()
    for _ in range(int(timeout / every)):
        if predicate():
            return
        waited.wait(every)
    raise AssertionError(f"timed out waiting for {what}")


def _running(worker: ThreadWorker) -> threading.Thread:
    runner = threading.Thread(target=worker.run)
    runner.start()
    return runner


@pytest.mark.timeout(240)
def test_balanced_outcomes_survive_a_crash_and_no_job_is_lost():
    with own_server() as server:
        engine = make_engine(server.url)
        observer = make_engine(server.url, poolclass=NullPool)  # no pooled connection to die
        try:
            db_upgrade(engine)
            set_durability(engine, "balanced")
            # The WAL writer flushes what asynchronous commits left every 10 s instead of every
            # 200 ms: whatever committed without waiting for the flush is lost by the crash.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("ALTER SYSTEM SET wal_writer_delay = '10s'"))
                connection.execute(text("SELECT pg_reload_conf()"))
            ran: list[int] = []
            crash_now = threading.Event()
            queue = Queue()

            @queue.task("work")
            def work(job):
                ran.append(job.payload["n"])
                if len(ran) == 250:
                    crash_now.set()  # mid-drain, with claims and outcomes in flight

            options = {"threads": 8, "poll_interval": 0.2, "heartbeat_interval": 0.5}
            # 1. Outcomes wait for the flush: the moment they are seen, a crash keeps them all.
            queue.enqueue_many(engine, [JobSpec("work", {"n": n}) for n in range(100)])
            worker = ThreadWorker(queue, engine, **options)
            runner = _running(worker)
            try:
                _until(lambda: _states(observer) == {"succeeded": 100}, "the first 100 jobs")
                kill_server(server)
                assert _states(observer) == {"succeeded": 100}
                assert read_durability(engine) == "balanced"

                # 2. A crash in the middle of a drain: every job ends succeeded, none is lost
                # (the claims lost with the crash leave their jobs queued, or the rescue does).
                queue.enqueue_many(engine, [JobSpec("work", {"n": n}) for n in range(100, 1100)])
                assert crash_now.wait(60), "the drain never reached the crash point"
                kill_server(server)
                _until(lambda: _states(observer) == {"succeeded": 1100}, "every job to succeed")
            finally:
                worker.stop()
                runner.join(60)
            assert not runner.is_alive()
            assert set(ran) == set(range(1100))  # some may have run twice: at least once
        finally:
            engine.dispose()
            observer.dispose()


@pytest.mark.timeout(240)
def test_a_crash_empties_a_volatile_queue_and_it_works_again():
    with own_server() as server:
        engine = make_engine(server.url)
        try:
            db_upgrade(engine)
            set_durability(engine, "volatile")
            queue = Queue()
            queue.enqueue_many(engine, [JobSpec("work", {"n": n}) for n in range(50)])
            assert _states(engine) == {"queued": 50}
            kill_server(server)
            engine.dispose()
            assert _states(engine) == {}  # UNLOGGED tables are emptied by crash recovery
            assert read_durability(engine) == "volatile"  # the settings table is logged
            job_id = queue.enqueue(engine, "work", {"n": 1})
            assert queue.get(engine, job_id) is not None
        finally:
            engine.dispose()
