"""A worker claims only while it is registered and its own lease is alive (issue 14).

The race the claim rule closes, staged deterministically: a rescue that has decided a worker is
dead (its transaction holds the worker's row, not yet committed) against that worker's claim;
and the other order, a claim in flight against a rescue. Then the whole loop on real workers: a
worker whose row was removed claims nothing until it registers again, under a new id.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from helpers import register
from sqlalchemy import text
from worker_helpers import KINDS, start_worker

from pgq_sa import JobSpec, JobStatus, Queue
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import run_sync


def _age(engine, worker_id) -> None:
    """Make the worker look silent for an hour (its row stays)."""
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE pgq.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = :w"),
            {"w": worker_id},
        )


def _wait_until_blocked(engine, application_name: str, timeout: float = 10.0) -> None:
    """Until the backend of ``application_name`` waits on a lock (observed, not slept for)."""
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = :name AND wait_event_type = 'Lock'"
                ),
                {"name": application_name},
            ).scalar_one()
            if waiting:
                return
            connection.rollback()
            time.sleep(0.02)
    raise AssertionError(f"{application_name} never waited on a lock")


def test_a_claim_waits_for_a_rescue_in_progress_then_claims_nothing(engine):
    """The claim's snapshot still sees the worker alive; the rescue (a moment later by the
    database's clock) has found it dead and holds its row. The claim must wait for the rescue
    and then lease nothing."""
    queue = Queue()
    queue.enqueue_many(engine, [JobSpec("t") for _ in range(3)])
    claimer = register(engine, queue, protocol.Identity.new("claimer"))
    answer: list[protocol.Claims] = []
    began = threading.Event()
    go = threading.Event()

    def claim() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql("SET application_name = 'staged-claim'")
            # the claim's clock: now() is its transaction's start
            (began_at,) = connection.execute(text("SELECT now()")).one()
            answer.append(began_at)
            began.set()
            go.wait(10)
            claims = run_sync(
                connection, protocol.claim(queue.statements, claimer.id, ["t"], None, 3)
            )
            connection.commit()
            answer.append(claims)

    thread = threading.Thread(target=claim)
    thread.start()
    assert began.wait(10)
    with engine.begin() as connection:  # alive by the claim's clock, dead by any later one
        connection.execute(
            text(
                "UPDATE pgq.workers SET heartbeat_at = "
                "CAST(:began AS timestamptz) - lease_timeout * interval '1 second' "
                "+ interval '1 millisecond' WHERE id = :w"
            ),
            {"began": answer[0], "w": claimer.id},
        )
    with engine.connect() as rescue:
        rescued = run_sync(rescue, protocol.rescue(queue.statements, uuid.uuid4(), 30.0))
        assert rescued.workers == 1  # decided: the claimer is dead (not committed yet)
        go.set()
        _wait_until_blocked(engine, "staged-claim")  # held on the claimer's row
        rescue.commit()
    thread.join(10)
    claims = answer[1]
    assert claims.jobs == []
    assert claims.alive is False  # it must register again before claiming
    with engine.connect() as connection:
        running = connection.execute(
            text("SELECT count(*) FROM pgq.jobs WHERE state = 'running'")
        ).scalar_one()
    assert running == 0


def test_a_rescue_skips_a_worker_whose_claim_is_in_flight(engine):
    queue = Queue()
    queue.enqueue_many(engine, [JobSpec("t") for _ in range(3)])
    claimer = register(engine, queue, protocol.Identity.new("claimer"))
    with engine.connect() as claiming:  # the claim has run; its transaction is still open
        claims = run_sync(claiming, protocol.claim(queue.statements, claimer.id, ["t"], None, 3))
        assert len(claims.jobs) == 3
        _age(engine, claimer.id)  # its lease runs out while the claim is not committed
        rescued = run_sync(engine, protocol.rescue(queue.statements, uuid.uuid4(), 30.0))
        assert rescued.workers == 0  # its row is locked by the claim: skipped this round
        assert rescued.requeued == 0
        claiming.commit()
    with engine.connect() as connection:
        holders = (
            connection.execute(
                text("SELECT DISTINCT worker_id FROM pgq.jobs WHERE state = 'running'")
            )
            .scalars()
            .all()
        )
    assert holders == [claimer.id]  # the next rescue takes them, with the worker's row
    rescued = run_sync(engine, protocol.rescue(queue.statements, uuid.uuid4(), 30.0))
    assert (rescued.workers, rescued.requeued) == (1, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_declared_dead_registers_again_under_a_new_id(kind, engine, database_url):
    queue = Queue()
    gate = threading.Event()

    @queue.task("t")
    def handler(job):
        gate.wait(30)

    first = queue.enqueue(engine, "t")
    running = start_worker(kind, queue, database_url, heartbeat_interval=0.2, lease_timeout=1.0)
    try:
        deadline = time.monotonic() + 30
        while queue.get(engine, first).status is not JobStatus.running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        old = running.worker.id
        # a rescuer declares it dead: its row and its running job go (the job queued again).
        # Locked, aged and rescued in one transaction: its heartbeats and claims wait meanwhile.
        with engine.begin() as connection:
            connection.execute(
                text("SELECT id FROM pgq.workers WHERE id = :w FOR UPDATE"), {"w": old}
            )
            connection.execute(
                text(
                    "UPDATE pgq.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = :w"
                ),
                {"w": old},
            )
            rescued = run_sync(connection, protocol.rescue(queue.statements, uuid.uuid4(), 1.0))
        assert (rescued.workers, rescued.requeued) == (1, 1)
        while running.worker.id == old:
            assert time.monotonic() < deadline, "the worker never registered again"
            time.sleep(0.05)
        gate.set()
        job = queue.wait(engine, first, timeout=30)  # the new incarnation runs it again
        assert job.status is JobStatus.succeeded
        assert job.attempts == 2
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id FROM pgq.workers")).scalars().all()
        assert rows == [running.worker.id]
    finally:
        gate.set()
        running.stop()
