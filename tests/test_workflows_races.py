"""Workflows under concurrency, staged deterministically: two parents finishing at once on two
connections (one transaction held open, the other seen blocked on the child's row lock), the
rescue and the cancel keeping the rule, the straggler sweep, the rolling upgrade (a worker of the
previous release cannot claim waiting steps), and the plans of the statements involved.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from test_lane_plans import _types

from pgq_sa import JobStatus, Queue, Workflow, WorkflowStatus
from pgq_sa._decisions import Outcome, succeeded
from pgq_sa._notifications import conninfo
from pgq_sa._ops import worker as protocol
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import run_sync
from pgq_sa._schema import notify_channel
from pgq_sa._worker.driver_path import CompiledStatement
from pgq_sa._worker.lanes import CLAIM_SESSION, FINISH_SESSION
from pgq_sa.migrations import db_downgrade, db_upgrade
from pgq_sa.testing import run_due_jobs


def _queue() -> Queue:
    queue = Queue()
    for name in ("a", "b", "c", "d", "e"):
        queue.task(name, max_attempts=1)(lambda job: job.task)
    return queue


def _diamond(queue: Queue, engine, *, join_policy: str = "cancel") -> tuple[int, list[int]]:
    flow = Workflow("diamond")
    a = flow.add("a")
    b, c = flow.add("b", after=[a]), flow.add("c", after=[a])
    flow.add("d", after=[b, c], on_upstream_failure=join_policy)
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_due_jobs(queue, engine, tasks=["a"])
    return workflow_id, [s.id for s in queue.get_workflow(engine, workflow_id).steps]


def _claim(queue: Queue, engine, task: str):
    worker = protocol.Identity.new("test")
    run_sync(engine, protocol.register(queue.statements, worker, [task], None, 1, 5.0, 60.0))
    claimed = run_sync(engine, protocol.claim(queue.statements, worker.id, [task], None, 1)).jobs
    return worker, claimed


def _row(engine, job_id: int) -> tuple[str, int]:
    with engine.connect() as connection:
        return tuple(
            connection.execute(
                text("SELECT state::text, waiting_for FROM pgq.jobs WHERE id = :id"), {"id": job_id}
            ).one()
        )


def _blocked_on_a_lock(engine, timeout: float = 10.0) -> None:
    """Wait until some session of this database waits for a row lock."""
    deadline = time.monotonic() + timeout
    statement = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(statement).scalar_one():
                return
        time.sleep(0.01)
    raise AssertionError("the second finish never waited for the first one's lock")


class Listener:
    def __init__(self, url) -> None:
        self.connection = psycopg.connect(conninfo(url), autocommit=True)
        self.connection.execute(f'LISTEN "{notify_channel("pgq")}"')

    def messages(self, quiet: float = 0.3) -> list[dict]:
        return [json.loads(n.payload) for n in self.connection.notifies(timeout=quiet)]

    def close(self) -> None:
        self.connection.close()


@pytest.mark.parametrize("outcomes", [("succeeded", "succeeded"), ("succeeded", "failed")])
def test_two_parents_finishing_at_once_settle_their_child_exactly_once(
    engine, database_url, outcomes
):
    queue = _queue()
    workflow_id, (_a, b, c, d) = _diamond(queue, engine)
    first_worker, (first,) = _claim(queue, engine, "b")
    second_worker, (second,) = _claim(queue, engine, "c")
    listener = Listener(database_url)

    def outcome(claimed, state: str) -> Outcome:
        if state == "succeeded":
            return succeeded(claimed.job.id, claimed.job.attempt, "done")
        return Outcome(claimed.job.id, claimed.job.attempt, "failed", error='{"type": "E"}')

    with engine.connect() as held:
        transaction = held.begin()
        finished = run_sync(
            held,
            protocol.finish(queue.statements, first_worker.id, [outcome(first, outcomes[0])]),
        )
        assert finished.recorded == {b: outcomes[0]}
        results: list[protocol.Finished] = []
        other = threading.Thread(
            target=lambda: results.append(
                run_sync(
                    engine,
                    protocol.finish(
                        queue.statements, second_worker.id, [outcome(second, outcomes[1])]
                    ),
                )
            )
        )
        other.start()
        _blocked_on_a_lock(engine)  # the second finish waits for the child's row
        assert _row(engine, d) == ("waiting", 2)  # committed state: nothing yet
        _, none = _claim(queue, engine, "d")
        assert none == []  # a child never starts before all its parents finished
        transaction.commit()
    other.join(30)
    assert not other.is_alive()
    assert results[0].recorded == {c: outcomes[1]}
    wakes = [m for m in listener.messages() if m.get("reason") == "workflow"]
    listener.close()
    if outcomes == ("succeeded", "succeeded"):
        assert _row(engine, d) == ("queued", 0)
        assert [m["tasks"] for m in wakes] == [["d"]]  # one wake-up, by the second statement
        _, (child,) = _claim(queue, engine, "d")
        assert child.job.id == d
        assert sorted(child.job.upstream) == [b, c]
        _, again = _claim(queue, engine, "d")
        assert again == []
    else:
        assert _row(engine, d) == ("cancelled", 0)
        assert wakes == []
        info = queue.get_workflow(engine, workflow_id)
        assert info.steps[3].error.message == f"upstream step {c} (c) failed"


def test_both_parents_failing_at_once_cancel_the_child_once(engine):
    queue = _queue()
    workflow_id, (_a, b, _c, _d) = _diamond(queue, engine)
    first_worker, (first,) = _claim(queue, engine, "b")
    second_worker, (second,) = _claim(queue, engine, "c")
    failed = [
        Outcome(claimed.job.id, claimed.job.attempt, "failed", error='{"type": "E"}')
        for claimed in (first, second)
    ]
    with engine.connect() as held:
        transaction = held.begin()
        run_sync(held, protocol.finish(queue.statements, first_worker.id, [failed[0]]))
        other = threading.Thread(
            target=run_sync,
            args=(engine, protocol.finish(queue.statements, second_worker.id, [failed[1]])),
        )
        other.start()
        _blocked_on_a_lock(engine)
        transaction.commit()
    other.join(30)
    info = queue.get_workflow(engine, workflow_id)
    child = info.steps[3]
    assert child.status is JobStatus.cancelled
    assert child.error.message == f"upstream step {b} (b) failed"  # the first one's
    assert info.status is WorkflowStatus.failed


def test_a_rescue_that_fails_a_step_cancels_its_dependents(engine):
    queue = _queue()
    workflow_id, (_a, b, _c, _d) = _diamond(queue, engine)
    with engine.begin() as connection:  # b runs its last attempt on a worker that died
        connection.execute(
            text(
                "INSERT INTO pgq.workers (id, name, kind, hostname, pid, tasks, concurrency, "
                "heartbeat_at) VALUES (:w, 'dead', 'thread', 'h', 1, ARRAY['b'], 1, "
                "now() - interval '1 hour')"
            ),
            {"w": uuid.UUID(int=1)},
        )
        connection.execute(
            text(
                "UPDATE pgq.jobs SET state = 'running', attempt = 1, worker_id = :w, "
                "started_at = now() WHERE id = :b"
            ),
            {"w": uuid.UUID(int=1), "b": b},
        )
    rescued = run_sync(engine, protocol.rescue(queue.statements, uuid.uuid4(), 60.0))
    assert rescued.failed == 1
    info = queue.get_workflow(engine, workflow_id)
    assert [s.status.value for s in info.steps] == ["succeeded", "failed", "queued", "cancelled"]
    assert info.steps[1].error.type == "pgq_sa.WorkerLost"
    assert info.steps[3].error.type == "pgq_sa.UpstreamFailed"


def test_a_cancel_racing_a_finish_leaves_no_step_behind(engine):
    """The finish holds the child; cancel_workflow waits for it and cancels what it queued."""
    queue = _queue()
    workflow_id, (_a, b, _c, _d) = _diamond(queue, engine)
    run_due_jobs(queue, engine, tasks=["c"])
    worker, (claimed,) = _claim(queue, engine, "b")
    with engine.connect() as held:
        transaction = held.begin()
        done = succeeded(b, claimed.job.attempt, None)
        run_sync(held, protocol.finish(queue.statements, worker.id, [done]))  # queues d
        counts: list[int] = []
        other = threading.Thread(
            target=lambda: counts.append(queue.cancel_workflow(engine, workflow_id))
        )
        other.start()
        _blocked_on_a_lock(engine)
        transaction.commit()
    other.join(30)
    assert counts == [1]
    info = queue.get_workflow(engine, workflow_id)
    assert [s.status.value for s in info.steps] == ["succeeded"] * 3 + ["cancelled"]
    _, none = _claim(queue, engine, "d")
    assert none == []


# --- the straggler sweep and the rolling upgrade -------------------------------------------------

# The claim statement of the release before workflows (commit 450f2a7), as its workers send it.
PREVIOUS_RELEASE_CLAIM = """
WITH picked AS (
    SELECT j.id
      FROM "pgq".jobs AS j
     WHERE j.state = 'queued' AND j.run_at <= now() AND j.task = any(%(tasks)s::TEXT[])
       AND j.queue NOT IN (SELECT q.name FROM "pgq".queues AS q WHERE q.paused)
     ORDER BY j.priority DESC, j.run_at, j.id
     LIMIT %(limit)s::INTEGER
       FOR UPDATE SKIP LOCKED
)
UPDATE "pgq".jobs AS c
       SET state = 'running', attempt = c.attempt + 1, started_at = now(),
           worker_id = %(worker_id)s::UUID
     WHERE c.id = any(ARRAY(SELECT picked.id FROM picked))
    RETURNING c.id, c.task, c.payload, c.attempt, c.max_attempts, c.priority, c.queue,
              c.created_at, c.timeout, c.scheduled_at, c.cancel_requested, c.run_at,
              c.started_at, c.meta
"""


def _finish_like_the_previous_release(engine, job_id: int, state: str) -> None:
    """What the previous release's finish writes for one outcome: the row, nothing else (it
    knows nothing of workflows, so the step's dependents are not settled)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE pgq.jobs SET state = CAST(:state AS pgq.job_state), finished_at = now(), "
                "attempt = attempt + 1 WHERE id = :id"
            ),
            {"state": state, "id": job_id},
        )


def test_a_worker_of_the_previous_release_never_claims_a_waiting_step(engine, database_url):
    queue = _queue()
    flow = Workflow()
    root = flow.add("a")
    flow.add_many("b", range(5), after=[root])
    workflow_id = queue.enqueue_workflow(engine, flow)
    with psycopg.connect(conninfo(database_url), autocommit=True) as connection:
        params = {"tasks": ["a", "b"], "limit": 100, "worker_id": uuid.uuid4()}
        claimed = connection.execute(PREVIOUS_RELEASE_CLAIM, params).fetchall()
    assert [row[1] for row in claimed] == ["a"]  # the root: queued like any job
    states = [s.status.value for s in queue.get_workflow(engine, workflow_id).steps]
    assert states == ["running"] + ["waiting"] * 5


def test_the_straggler_sweep_settles_steps_a_previous_release_left_waiting(engine):
    queue = _queue()
    flow = Workflow()
    a = flow.add("a")
    b = flow.add("b", after=[a])  # a finished by the old release: b is left waiting
    broken = flow.add("c")
    after_broken = flow.add("d", after=[broken])  # cancel
    further = flow.add("e", after=[after_broken])  # cancelled in cascade
    cleanup = flow.add("e", after=[after_broken], on_upstream_failure="run")
    workflow_id = queue.enqueue_workflow(engine, flow)
    info = queue.get_workflow(engine, workflow_id)
    _finish_like_the_previous_release(engine, info.step(a).id, "succeeded")
    _finish_like_the_previous_release(engine, info.step(broken).id, "failed")
    assert _row(engine, info.step(b).id) == ("waiting", 1)

    settled = run_sync(engine, wf_operations.settle_stragglers(queue.statements))
    assert (settled.queued, settled.cancelled) == (1, 2)
    assert settled.cursor == (0, 0)
    info = queue.get_workflow(engine, workflow_id)
    assert info.step(b).status is JobStatus.queued
    assert info.step(after_broken).status is JobStatus.cancelled
    assert info.step(after_broken).error.type == "pgq_sa.UpstreamFailed"
    assert info.step(further).status is JobStatus.cancelled  # the cascade
    assert info.step(cleanup).status is JobStatus.queued  # "run": counted down to 0
    again = run_sync(engine, wf_operations.settle_stragglers(queue.statements))
    assert (again.queued, again.cancelled) == (0, 0)
    run_due_jobs(queue, engine)
    assert queue.get_workflow(engine, workflow_id).status is WorkflowStatus.failed


def test_the_sweep_is_bounded_and_walks_on(engine):
    queue = _queue()
    ids = []
    for _ in range(3):
        flow = Workflow()
        flow.add("b", after=[flow.add("a")])
        workflow_id = queue.enqueue_workflow(engine, flow)
        first = queue.get_workflow(engine, workflow_id).steps[0].id
        _finish_like_the_previous_release(engine, first, "succeeded")
        ids.append(workflow_id)
    cursor = (0, 0)
    queued = []
    for _ in range(3):
        settled = run_sync(
            engine, wf_operations.settle_stragglers(queue.statements, cursor, scan=2, limit=10)
        )
        assert settled.scanned == 2
        queued.append(settled.queued)
        cursor = settled.cursor
    assert queued == [1, 1, 1]
    assert cursor != (0, 0)
    last = run_sync(engine, wf_operations.settle_stragglers(queue.statements, cursor, scan=2))
    assert last.scanned == 0
    assert last.cursor == (0, 0)  # the end: start again


def test_a_database_at_the_previous_head_upgrades_with_jobs_in_flight(empty_engine):
    db_upgrade(empty_engine, revision="pgq_sa_0004")
    queue = _queue()
    queued = queue.enqueue(empty_engine, "a", dedupe_key="k1")
    running = queue.enqueue(empty_engine, "b", dedupe_key="k2")
    worker, (claimed,) = _claim(queue, empty_engine, "b")
    db_upgrade(empty_engine)  # the held-key index is built over the live keys
    assert queue.enqueue(empty_engine, "a", dedupe_key="k1") == queued
    finished = run_sync(
        empty_engine,
        protocol.finish(queue.statements, worker.id, [succeeded(running, claimed.job.attempt, 1)]),
    )
    assert finished.recorded == {running: "succeeded"}
    assert [r.id for r in run_due_jobs(queue, empty_engine)] == [queued]
    flow = Workflow()
    flow.add("b", after=[flow.add("a")], dedupe_key="k1")
    workflow_id = queue.enqueue_workflow(empty_engine, flow)
    run_due_jobs(queue, empty_engine)
    assert queue.get_workflow(empty_engine, workflow_id).status is WorkflowStatus.succeeded
    db_downgrade(empty_engine, revision="pgq_sa_0004")
    db_upgrade(empty_engine)


# --- plans ---------------------------------------------------------------------------------------


def _generic_plan(database_url, statement, params, session) -> str:
    """EXPLAIN ANALYZE of ``statement``'s generic plan, prepared as the workers' lanes prepare
    it (see tests/test_lane_plans.py)."""
    dialect = create_async_engine(database_url.set(drivername="postgresql+asyncpg")).dialect
    compiled = CompiledStatement.compile(statement, dialect)
    arguments = compiled.arguments(params)
    types = _types(len(arguments), compiled)
    placeholders = ", ".join(f"%s::{t}" for t in types)
    with psycopg.connect(conninfo(database_url), autocommit=True) as connection:
        for setting, value in session:
            connection.execute(f"SET {setting} = {value}")
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute(f"PREPARE hot ({', '.join(types)}) AS {compiled.sql}")
        cursor = psycopg.ClientCursor(connection)
        with connection.transaction(force_rollback=True):
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE hot({placeholders})", arguments)
            return "\n".join(row[0] for row in cursor.fetchall())


def test_the_unblocking_reads_edges_through_their_indexes(engine, database_url):
    """Finishing one parent of a 2,000-step fan-in, in a table of 4,000 edges, touches its own
    edges only: no scan of job_dependencies or jobs, whatever plan the lane cached."""
    queue = _queue()
    flow = Workflow()
    root = flow.add("a")
    middle = flow.add_many("b", range(2000), after=[root])
    flow.add("c", after=middle)
    queue.enqueue_workflow(engine, flow)
    run_due_jobs(queue, engine, tasks=["a"])
    worker, (claimed,) = _claim(queue, engine, "b")
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE pgq.jobs")
        connection.exec_driver_sql("ANALYZE pgq.job_dependencies")
    from pgq_sa._decisions import finish_parameters

    outcome = succeeded(claimed.job.id, claimed.job.attempt, None)
    params = {"worker_id": worker.id, "tasks": ["b"], "limit": 10}
    params.update(finish_parameters([outcome]))
    for name, session in (("finish", FINISH_SESSION), ("finish_and_claim", CLAIM_SESSION)):
        plan = _generic_plan(database_url, getattr(queue.statements, name), params, session)
        assert "Seq Scan on job_dependencies" not in plan, plan
        assert "Seq Scan on jobs" not in plan, plan
        assert "Index Only Scan using job_dependencies_pkey" in plan, plan


def test_finishing_the_root_of_a_wide_fan_out_is_linear(engine, database_url):
    """Queuing 2,000 children is 2,000 primary-key lookups, never a scan of one CTE per row."""
    queue = _queue()
    flow = Workflow()
    flow.add_many("b", range(2000), after=[flow.add("a")])
    queue.enqueue_workflow(engine, flow)
    worker, (claimed,) = _claim(queue, engine, "a")
    from pgq_sa._decisions import finish_parameters

    params = {"worker_id": worker.id, "tasks": ["a"], "limit": 10}
    params.update(finish_parameters([succeeded(claimed.job.id, claimed.job.attempt, None)]))
    for name, session in (("finish", FINISH_SESSION), ("finish_and_claim", CLAIM_SESSION)):
        plan = _generic_plan(database_url, getattr(queue.statements, name), params, session)
        # PostgreSQL 18 prints fractional rows ("rows=2000.00")
        assert re.search(r"rows=2000(\.00)? loops=1\)", plan), plan  # all settled, once
        for line in plan.splitlines():
            found = re.search(r"rows=([\d.]+) loops=(\d+)\)", line)
            if found and "CTE Scan" in line:
                rows, loops = float(found[1]), int(found[2])
                assert rows * loops <= 2 * 2000, plan


def _sent_by_claim(queue: Queue, engine, task: str) -> tuple[list, list[protocol.Claimed]]:
    """Claim one job of ``task`` on a fresh worker row: the statements sent, and the jobs."""
    worker = protocol.Identity.new("test")
    run_sync(engine, protocol.register(queue.statements, worker, [task], None, 1, 5.0, 60.0))
    operation = protocol.claim(queue.statements, worker.id, [task], None, 10)
    sent = []
    with engine.begin() as connection:
        statement, params = next(operation)
        while True:
            sent.append(statement)
            rows = connection.execute(statement, params).all()
            try:
                statement, params = operation.send(rows)
            except StopIteration as done:
                return sent, done.value.jobs


def test_a_claim_of_plain_jobs_never_touches_the_edges(engine):
    queue = _queue()
    queue.enqueue(engine, "a")
    sent, claimed = _sent_by_claim(queue, engine, "a")
    assert [job.job.task for job in claimed] == ["a"]
    assert sent == [queue.statements.claim]  # one statement...
    statements = queue.statements
    for statement in (
        statements.claim,
        statements.claim_in_queues,
        statements.claim_limited,
        statements.finish_and_claim_plain,
        statements.finish_and_claim_in_queues_plain,
    ):
        assert "job_dependencies" not in str(statement)  # ...that has no subplan on the edges


def test_a_claim_of_steps_reads_their_upstream_and_dependents_in_a_second_statement(engine):
    queue = _queue()
    flow = Workflow("chain")
    first = flow.add("a")
    flow.add("c", after=[flow.add("b", after=[first])])
    workflow_id = queue.enqueue_workflow(engine, flow)
    a_id, b_id, c_id = [s.id for s in queue.get_workflow(engine, workflow_id).steps]
    run_due_jobs(queue, engine, tasks=["a"])
    sent, (b,) = _sent_by_claim(queue, engine, "b")
    assert sent == [queue.statements.claim, queue.statements.workflows.step_context]
    assert (b.job.id, b.job.workflow_id, b.job.dependents) == (b_id, workflow_id, (c_id,))
    (parent,) = b.job.upstream.values()
    assert (parent.id, parent.status, parent.result) == (a_id, JobStatus.succeeded, "a")
