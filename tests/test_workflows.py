"""Workflows, the contract: chains, fan-out, fan-in, the upstream policies, cancel and retry,
dedupe keys, atomic creation, bad input refused before any SQL, and retention.

Steps run through ``pgq_sa.testing.run_due_jobs`` (the workers' own claim and finish
statements, one job at a time), so the order of the runs is the order the database allowed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import anyio
import pytest
from helpers import snapshot
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from pgq_sa import (
    DedupeConflict,
    JobSpec,
    JobStatus,
    Queue,
    UpstreamFailed,
    Workflow,
    WorkflowInfo,
    WorkflowStatus,
)
from pgq_sa import _workflow as workflow_module
from pgq_sa._config import make_async_engine
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import run_sync
from pgq_sa.testing import run_due_jobs, run_due_jobs_async


def _queue(failing: set[str] = frozenset()) -> tuple[Queue, list[tuple[str, object]]]:
    """A queue whose tasks record (task, payload) as they run; tasks in ``failing`` raise."""
    queue = Queue()
    ran: list[tuple[str, object]] = []

    def handler(job):
        ran.append((job.task, job.payload))
        if job.task in failing or (isinstance(job.payload, dict) and job.payload.get("fail")):
            raise RuntimeError(f"{job.task} broke")
        return {
            "task": job.task,
            "payload": job.payload,
            "upstream": {
                str(k): [v.task, v.status.value, v.result] for k, v in job.upstream.items()
            },
        }

    for name in ("a", "b", "c", "d", "e", "cleanup", "boom"):
        queue.task(name, max_attempts=1)(handler)
    return queue, ran


def _states(queue: Queue, engine, workflow_id: int) -> list[tuple[str, str]]:
    info = queue.get_workflow(engine, workflow_id)
    assert info is not None
    return [(s.task, s.status.value) for s in info.steps]


# --- the shapes ----------------------------------------------------------------------------------


def test_a_diamond_runs_in_order_and_results_flow_downstream(engine):
    queue, ran = _queue()
    flow = Workflow("orders.fulfil")
    a = flow.add("a", {"order": 7})
    b = flow.add("b", {"side": "left"}, after=[a])
    c = flow.add("c", {"side": "right"}, after=[a])
    d = flow.add("d", after=[b, c])
    workflow_id = queue.enqueue_workflow(engine, flow)

    info = queue.get_workflow(engine, workflow_id)
    assert isinstance(info, WorkflowInfo)
    assert info.name == "orders.fulfil"
    assert info.status is WorkflowStatus.running
    assert [s.status for s in info.steps] == [JobStatus.queued] + [JobStatus.waiting] * 3
    assert all(s.workflow_id == workflow_id for s in info.steps)
    ids = [s.id for s in info.steps]
    assert ids == sorted(ids)  # in the order they were added
    assert info.dependencies == {
        ids[0]: (),
        ids[1]: (ids[0],),
        ids[2]: (ids[0],),
        ids[3]: (ids[1], ids[2]),
    }
    assert info.step(d).id == ids[3]
    assert info.dependents(ids[0]) == [ids[1], ids[2]]
    assert queue.get(engine, ids[3]).workflow_id == workflow_id

    runs = run_due_jobs(queue, engine)
    assert next(r.task for r in runs) == "a"
    assert [r.task for r in runs][-1] == "d"
    assert sorted(r.task for r in runs[1:3]) == ["b", "c"]
    final = queue.get_workflow(engine, workflow_id)
    assert final.status is WorkflowStatus.succeeded
    assert final.finished
    assert final.finished_at == max(s.finished_at for s in final.steps)
    joined = final.step(d).result
    assert joined["upstream"] == {
        str(ids[1]): ["b", "succeeded", {"task": "b", "payload": {"side": "left"},
                                           "upstream": {str(ids[0]): ["a", "succeeded", {
                                               "task": "a", "payload": {"order": 7},
                                               "upstream": {}}]}}],
        str(ids[2]): ["c", "succeeded", {"task": "c", "payload": {"side": "right"},
                                           "upstream": {str(ids[0]): ["a", "succeeded", {
                                               "task": "a", "payload": {"order": 7},
                                               "upstream": {}}]}}],
    }  # fmt: skip
    assert queue.get(engine, ids[0]).workflow_id == workflow_id
    assert ran[0] == ("a", {"order": 7})


def test_fan_out_and_fan_in_with_add_many(engine):
    queue, _ran = _queue()
    flow = Workflow()  # a name is optional
    root = flow.add("a")
    labels = flow.add_many("b", [{"parcel": p} for p in range(5)], after=[root])
    notify = flow.add("c", after=[root, *labels])
    workflow_id = queue.enqueue_workflow(engine, flow)
    assert len(labels) == 5
    assert [s.index for s in labels] == [1, 2, 3, 4, 5]
    runs = run_due_jobs(queue, engine)
    assert [r.task for r in runs] == ["a", *["b"] * 5, "c"]
    info = queue.get_workflow(engine, workflow_id)
    assert info.name is None
    assert info.status is WorkflowStatus.succeeded
    assert len(info.step(notify).result["upstream"]) == 6


def test_a_chain_waits_for_each_link(engine):
    queue, _ = _queue()
    flow = Workflow("chain")
    previous = flow.add("a", 0)
    for n in range(1, 5):
        previous = flow.add("a", n, after=[previous])
    workflow_id = queue.enqueue_workflow(engine, flow)
    for n in range(5):
        (run,) = run_due_jobs(queue, engine, max_jobs=1)
        assert run.payload == n
        waiting = [
            s for s in queue.get_workflow(engine, workflow_id).steps if s.status == "waiting"
        ]
        assert len(waiting) == max(3 - n, 0)
    assert run_due_jobs(queue, engine) == []


def test_a_failure_cancels_cancel_dependents_transitively_and_run_dependents_still_run(engine):
    queue, _ = _queue(failing={"boom"})
    flow = Workflow("compensate")
    a = flow.add("a")
    broken = flow.add("boom", after=[a])
    after_broken = flow.add("b", after=[broken])
    further = flow.add("c", after=[after_broken])
    beside = flow.add("d", after=[a])  # not downstream of the failure: runs
    cleanup = flow.add("cleanup", after=[broken, beside], on_upstream_failure="run")
    after_cleanup = flow.add("e", after=[cleanup])
    workflow_id = queue.enqueue_workflow(engine, flow)

    runs = run_due_jobs(queue, engine)
    assert sorted(r.task for r in runs) == ["a", "boom", "cleanup", "d", "e"]
    info = queue.get_workflow(engine, workflow_id)
    assert info.status is WorkflowStatus.failed
    by_handle = {h: info.step(h) for h in (broken, after_broken, further, cleanup, after_cleanup)}
    assert by_handle[broken].status is JobStatus.failed
    for handle in (after_broken, further):
        step = by_handle[handle]
        assert step.status is JobStatus.cancelled
        assert step.error.type == "pgq_sa.UpstreamFailed" == f"pgq_sa.{UpstreamFailed.__name__}"
        assert step.error.message == f"upstream step {info.step(broken).id} (boom) failed"
        assert step.started_at is None
        assert step.finished_at is not None
    seen = by_handle[cleanup].result["upstream"]
    assert seen[str(info.step(broken).id)][:2] == ["boom", "failed"]
    assert seen[str(info.step(beside).id)][:2] == ["d", "succeeded"]
    assert by_handle[after_cleanup].status is JobStatus.succeeded


def test_the_upstream_job_info_carries_the_failure(engine):
    queue = Queue()
    seen = {}

    @queue.task("fails", max_attempts=1)
    def fails(job):
        raise ValueError("no stock")

    @queue.task("compensate")
    def compensate(job):
        seen.update(job.upstream)

    flow = Workflow()
    broken = flow.add("fails", {"big": "x" * 100})
    flow.add("compensate", after=[broken], on_upstream_failure="run")
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_due_jobs(queue, engine)
    (info,) = seen.values()
    stored = queue.get_workflow(engine, workflow_id).step(broken)
    assert info.id == stored.id
    assert info.status is JobStatus.failed
    assert info.error.type == "ValueError"
    assert info.error.message == "no stock"
    assert info.payload is None  # payloads stay out of job.upstream
    assert info.workflow_id == workflow_id
    assert info.attempts == 1
    assert abs(info.finished_at - stored.finished_at) < timedelta(milliseconds=1)
    assert abs(info.created_at - stored.created_at) < timedelta(milliseconds=1)


def test_cancelling_a_waiting_step_cascades(engine):
    queue, _ = _queue()
    flow = Workflow()
    a = flow.add("a")
    b = flow.add("b", after=[a])
    c = flow.add("c", after=[b])
    d = flow.add("d", after=[a, b], on_upstream_failure="run")
    workflow_id = queue.enqueue_workflow(engine, flow)
    info = queue.get_workflow(engine, workflow_id)
    assert queue.cancel(engine, info.step(b).id)
    info = queue.get_workflow(engine, workflow_id)
    assert info.step(b).status is JobStatus.cancelled
    assert info.step(c).status is JobStatus.cancelled
    assert info.step(c).error.message == f"upstream step {info.step(b).id} (b) was cancelled"
    assert info.step(d).status is JobStatus.waiting  # still waits for a
    runs = run_due_jobs(queue, engine)
    assert [r.task for r in runs] == ["a", "d"]
    assert queue.get_workflow(engine, workflow_id).status is WorkflowStatus.cancelled


# --- cancel and retry ----------------------------------------------------------------------------


def test_cancel_workflow_cancels_every_step_not_finished(engine):
    queue, _ = _queue()
    flow = Workflow()
    a = flow.add("a")
    flow.add("b", after=[a])
    flow.add("c")
    workflow_id = queue.enqueue_workflow(engine, flow)
    (run,) = run_due_jobs(queue, engine, max_jobs=1)
    assert run.task == "a"
    assert queue.cancel_workflow(engine, workflow_id) == 2
    info = queue.get_workflow(engine, workflow_id)
    assert [s.status.value for s in info.steps] == ["succeeded", "cancelled", "cancelled"]
    assert info.status is WorkflowStatus.cancelled
    assert queue.cancel_workflow(engine, workflow_id) == 0
    assert queue.cancel_workflow(engine, 10**12) == 0
    assert run_due_jobs(queue, engine) == []


def test_cancel_workflow_asks_running_steps_to_stop(engine):
    queue, _ = _queue()
    flow = Workflow()
    a = flow.add("a")
    flow.add("b", after=[a])
    workflow_id = queue.enqueue_workflow(engine, flow)
    holder = protocol.Identity.new("test")
    run_sync(engine, protocol.register(queue.statements, holder, ["a"], None, 1, 5.0, 60.0))
    (claimed,) = run_sync(engine, protocol.claim(queue.statements, holder.id, ["a"], None, 1)).jobs
    assert queue.cancel_workflow(engine, workflow_id) == 2
    info = queue.get_workflow(engine, workflow_id)
    assert info.steps[0].status is JobStatus.running
    assert info.steps[0].cancel_requested
    assert info.steps[1].status is JobStatus.cancelled
    (beat,) = [run_sync(engine, protocol.heartbeat(queue.statements, holder.id))]
    assert beat.cancel == (claimed.job.id,)


def test_retry_workflow_revives_failed_steps_and_their_cascade_and_keeps_successes(engine):
    queue = Queue()
    broken = {"yes": True}
    runs_of: dict[str, int] = {}

    @queue.task("step", max_attempts=1)
    def step(job):
        runs_of[job.payload] = runs_of.get(job.payload, 0) + 1
        if job.payload == "fragile" and broken["yes"]:
            raise RuntimeError("down")
        return job.payload

    flow = Workflow()
    a = flow.add("step", "a")
    fragile = flow.add("step", "fragile", after=[a])
    other = flow.add("step", "other", after=[a])
    join = flow.add("step", "join", after=[fragile, other])
    after_join = flow.add("step", "after_join", after=[join])
    compensate = flow.add("step", "compensate", after=[fragile], on_upstream_failure="run")
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_due_jobs(queue, engine)
    info = queue.get_workflow(engine, workflow_id)
    assert info.status is WorkflowStatus.failed
    assert [info.step(h).status.value for h in (join, after_join, compensate)] == [
        "cancelled",
        "cancelled",
        "succeeded",
    ]

    broken["yes"] = False
    assert queue.retry_workflow(engine, workflow_id) == 3  # fragile, join, after_join
    info = queue.get_workflow(engine, workflow_id)
    assert info.status is WorkflowStatus.running
    assert info.step(fragile).status is JobStatus.queued
    assert info.step(fragile).max_attempts == 2  # one more attempt than it had
    assert info.step(join).status is JobStatus.waiting
    assert info.step(join).error is None
    assert info.step(after_join).status is JobStatus.waiting
    assert info.step(compensate).status is JobStatus.succeeded  # kept
    with engine.connect() as connection:
        waits = dict(
            connection.execute(
                text("SELECT id, waiting_for FROM pgq.jobs WHERE workflow_id = :w"),
                {"w": workflow_id},
            ).all()
        )
    assert waits[info.step(join).id] == 1
    assert waits[info.step(after_join).id] == 1

    runs = run_due_jobs(queue, engine)
    assert [r.payload for r in runs] == ["fragile", "join", "after_join"]
    assert queue.get_workflow(engine, workflow_id).status is WorkflowStatus.succeeded
    assert runs_of == {"a": 1, "fragile": 2, "other": 1, "join": 1, "after_join": 1,
                       "compensate": 1}  # fmt: skip
    assert queue.retry_workflow(engine, workflow_id) == 0
    assert queue.retry_workflow(engine, 10**12) == 0


def test_retry_makes_a_waiting_run_dependent_wait_for_the_revived_step_again(engine):
    queue, _ = _queue(failing={"boom"})
    flow = Workflow()
    slow = flow.add("a")
    broken = flow.add("boom")
    cleanup = flow.add("cleanup", after=[broken, slow], on_upstream_failure="run")
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_due_jobs(queue, engine, tasks=["boom"])
    info = queue.get_workflow(engine, workflow_id)
    assert info.step(broken).status is JobStatus.failed
    assert info.step(cleanup).status is JobStatus.waiting  # still waits for "a"
    assert queue.retry_workflow(engine, workflow_id) == 1
    with engine.connect() as connection:
        waiting_for = connection.execute(
            text("SELECT waiting_for FROM pgq.jobs WHERE id = :id"),
            {"id": info.step(cleanup).id},
        ).scalar_one()
    assert waiting_for == 2  # "a", and the revived step again
    run_due_jobs(queue, engine, tasks=["a"])
    assert queue.get_workflow(engine, workflow_id).step(cleanup).status is JobStatus.waiting


def test_a_single_step_is_retried_with_retry_workflow_not_retry(engine):
    queue, _ = _queue(failing={"boom"})
    flow = Workflow()
    flow.add("boom")
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_due_jobs(queue, engine)
    step = queue.get_workflow(engine, workflow_id).steps[0]
    assert not queue.retry(engine, step.id)
    assert queue.retry_workflow(engine, workflow_id) == 1


# --- creation ------------------------------------------------------------------------------------


def test_a_rolled_back_session_leaves_nothing(engine):
    queue, _ = _queue()
    before = snapshot(engine)
    flow = Workflow("rolled back")
    a = flow.add("a")
    flow.add_many("b", range(50), after=[a])
    with Session(engine) as session:
        workflow_id = queue.enqueue_workflow(session, flow)
        assert queue.get_workflow(session, workflow_id).status is WorkflowStatus.running
        session.rollback()
    assert queue.get_workflow(engine, workflow_id) is None
    assert snapshot(engine) == before


def test_enqueue_takes_a_constant_number_of_statements(engine):
    queue, _ = _queue()
    counts = []
    for size in (1, 300):
        flow = Workflow()
        root = flow.add("a")
        middle = flow.add_many("b", range(size), after=[root])
        flow.add("c", after=middle)
        statements: list[str] = []

        def count(*args, statements=statements):
            statements.append(args[2])

        with engine.connect() as connection:
            event.listen(connection, "before_cursor_execute", count)
            with connection.begin():
                queue.enqueue_workflow(connection, flow)
            event.remove(connection, "before_cursor_execute", count)
        counts.append(len(statements))
    assert counts == [1, 1]


def test_enqueue_workflow_joins_the_callers_transaction_on_async_binds(database_url):
    queue, _ = _queue()

    async def main():
        engine = make_async_engine(database_url)
        try:
            flow = Workflow("async")
            flow.add("b", after=[flow.add("a")])
            async with engine.connect() as connection:
                async with connection.begin():
                    workflow_id = await queue.enqueue_workflow_async(connection, flow)
                    inside = await queue.get_workflow_async(connection, workflow_id)
                    assert inside.status is WorkflowStatus.running
                runs = await run_due_jobs_async(queue, connection)
                await connection.commit()
            assert [r.task for r in runs] == ["a", "b"]
            info = await queue.get_workflow_async(engine, workflow_id)
            assert info.status is WorkflowStatus.succeeded
            assert await queue.cancel_workflow_async(engine, workflow_id) == 0
            assert await queue.retry_workflow_async(engine, workflow_id) == 0
        finally:
            await engine.dispose()

    anyio.run(main, backend="asyncio")


def test_a_held_dedupe_key_returns_the_live_workflow(engine):
    queue, _ = _queue()

    def order_flow(n: int) -> Workflow:
        flow = Workflow(f"order {n}")
        first = flow.add("a", {"n": n})
        flow.add("b", {"n": n}, after=[first], dedupe_key="order-7:charge")
        return flow

    first = queue.enqueue_workflow(engine, order_flow(1))
    before = snapshot(engine)
    assert queue.enqueue_workflow(engine, order_flow(2)) == first  # held by a waiting step
    assert snapshot(engine) == before
    run_due_jobs(queue, engine)
    assert queue.get_workflow(engine, first).status is WorkflowStatus.succeeded
    second = queue.enqueue_workflow(engine, order_flow(3))  # finished: the key is free again
    assert second != first


def test_a_key_held_by_a_plain_job_is_refused_and_the_callers_work_kept(engine):
    queue, _ = _queue()
    holder = queue.enqueue(engine, "a", dedupe_key="k")
    flow = Workflow()
    flow.add("b", after=[flow.add("a")], dedupe_key="k")
    with Session(engine) as session:
        mine = queue.enqueue(session, "c", {"mine": True})
        with pytest.raises(DedupeConflict, match=f"held by job {holder}") as raised:
            queue.enqueue_workflow(session, flow)
        assert raised.value.key == "k"
        assert raised.value.holder == holder
        session.commit()  # the savepoint undid the workflow only
    assert queue.get(engine, mine).status is JobStatus.queued
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pgq.workflows")).scalar_one() == 0
        assert connection.execute(text("SELECT count(*) FROM pgq.jobs")).scalar_one() == 2


def test_a_plain_enqueue_resolves_to_the_waiting_step_holding_its_key(engine):
    """A waiting step holds its key (migration step 0005): a plain job cannot take it, so the
    statement that later queues the step never meets a duplicate."""
    queue, _ = _queue()
    flow = Workflow()
    flow.add("b", after=[flow.add("a")], dedupe_key="shared")
    workflow_id = queue.enqueue_workflow(engine, flow)
    step = queue.get_workflow(engine, workflow_id).steps[1]
    assert step.status is JobStatus.waiting
    assert queue.enqueue(engine, "c", dedupe_key="shared") == step.id
    assert queue.enqueue_many(engine, [JobSpec("c", dedupe_key="shared")]) == [step.id]
    run_due_jobs(queue, engine)
    assert queue.get_workflow(engine, workflow_id).status is WorkflowStatus.succeeded


# --- bad input -----------------------------------------------------------------------------------


def test_bad_workflows_are_refused_before_any_sql(engine):
    queue, _ = _queue()
    not_a_bind = object()  # reaching SQL would raise a TypeError about the bind instead
    with pytest.raises(ValueError, match="no steps"):
        queue.enqueue_workflow(not_a_bind, Workflow("empty"))
    with pytest.raises(TypeError, match=r"takes a pgq_sa\.Workflow"):
        queue.enqueue_workflow(not_a_bind, [JobSpec("a")])

    flow, other = Workflow(), Workflow()
    foreign = other.add("a")
    with pytest.raises(ValueError, match="belongs to another Workflow"):
        flow.add("b", after=[foreign])
    with pytest.raises(TypeError, match="after takes steps"):
        flow.add("b", after=[1])
    with pytest.raises(TypeError, match="after must be a list"):
        flow.add("b", after="a")
    with pytest.raises(ValueError, match="on_upstream_failure must be 'cancel'"):
        flow.add("b", on_upstream_failure="ignore")
    with pytest.raises(ValueError, match="task name must not be empty"):
        flow.add("")
    with pytest.raises(TypeError, match="iterable of payloads"):
        flow.add_many("b", {"not": "a list"})
    with pytest.raises(ValueError, match="workflow name"):
        Workflow("")
    assert len(flow) == 0  # nothing half-added

    flow.add("a")
    flow.add("b", priority=10**6)
    with pytest.raises(ValueError, match=r"step 1 \('b'\): priority 1000000 is out of range"):
        queue.enqueue_workflow(not_a_bind, flow)
    flow = Workflow()
    flow.add("a", {"x": float("nan")})
    with pytest.raises(ValueError, match=r"step 0 \('a'\): payload must be valid JSON"):
        queue.enqueue_workflow(not_a_bind, flow)
    flow = Workflow()
    flow.add("a", dedupe_key="same")
    flow.add("b", dedupe_key="same")
    with pytest.raises(ValueError, match="steps 0 and 1 have the same dedupe_key"):
        queue.enqueue_workflow(not_a_bind, flow)
    flow = Workflow()
    flow.add("a", delay=5, run_at=datetime.now(timezone.utc))
    with pytest.raises(ValueError, match="delay or run_at"):
        queue.enqueue_workflow(not_a_bind, flow)
    for bad in (0, -1, True, "7"):
        with pytest.raises((TypeError, ValueError), match="workflow id"):
            queue.get_workflow(not_a_bind, bad)
    with pytest.raises(TypeError, match="timeout"):
        queue.wait_workflow(not_a_bind, 1, timeout="soon")


def test_a_cycle_cannot_be_written(engine):
    """``after`` only takes handles of steps already added: the graph is built in a
    topological order, so a cycle has no way in; a handle never points forward."""
    flow = Workflow()
    a = flow.add("a")
    b = flow.add("b", after=[a])
    assert b.index > a.index
    with pytest.raises(TypeError):
        flow.add("a", after=[object()])  # a placeholder for a later step is refused


def test_the_step_limit(engine, monkeypatch):
    monkeypatch.setattr(workflow_module, "MAX_STEPS", 3)
    flow = Workflow()
    flow.add_many("a", range(3))
    with pytest.raises(ValueError, match="at most 3 steps"):
        flow.add("a")
    monkeypatch.setattr(workflow_module, "MAX_STEPS", 100)
    monkeypatch.setattr(workflow_module, "MAX_EDGES", 4)
    flow = Workflow()
    roots = flow.add_many("a", range(3))
    with pytest.raises(ValueError, match="at most 4 dependencies"):
        flow.add_many("b", range(2), after=roots)


# --- retention -----------------------------------------------------------------------------------


def test_retention_prunes_finished_workflows_whole_and_keeps_live_ones(engine):
    queue, _ = _queue(failing={"boom"})
    done, live, failed = Workflow("done"), Workflow("live"), Workflow("failed")
    done.add("b", after=[done.add("a")])
    live.add("d", after=[live.add("c")])
    failed.add("e", after=[failed.add("boom")])
    done_id = queue.enqueue_workflow(engine, done)
    live_id = queue.enqueue_workflow(engine, live)
    failed_id = queue.enqueue_workflow(engine, failed)
    plain = queue.enqueue(engine, "a")
    run_due_jobs(queue, engine, tasks=["a", "b", "c", "boom"])  # "d" of live stays waiting
    info = queue.get_workflow(engine, live_id)
    assert next(s.status.value for s in info.steps) == "succeeded"
    with engine.begin() as connection:  # everything finished a day ago
        connection.execute(
            text(
                "UPDATE pgq.jobs SET finished_at = now() - interval '1 day' WHERE finished_at "
                "IS NOT NULL"
            )
        )
    removed = run_sync(engine, protocol.prune(queue.statements, 3600.0, 7 * 86400.0, 100))
    assert removed == 3  # the plain job and the two steps of "done"
    assert queue.get_workflow(engine, done_id) is None
    assert queue.get(engine, plain) is None
    assert queue.get_workflow(engine, live_id).steps[0].status is JobStatus.succeeded  # needed
    assert len(queue.get_workflow(engine, failed_id).steps) == 2  # kept for 7 days
    removed = run_sync(engine, protocol.prune(queue.statements, 3600.0, 3600.0, 100))
    assert removed == 2
    assert queue.get_workflow(engine, failed_id) is None
    with engine.connect() as connection:
        edges = connection.execute(text("SELECT count(*) FROM pgq.job_dependencies"))
        assert edges.scalar_one() == 1  # the live workflow's


def test_upstream_serialisation_is_json():
    """The claim's upstream array decodes to JobInfo whatever the driver hands over."""
    entry = {
        "id": 1, "task": "t", "queue": "default", "state": "succeeded", "attempt": 1,
        "max_attempts": 3, "priority": 0, "result": [1], "error": None,
        "created_at": 1.5, "started_at": None, "finished_at": 2.25, "run_at": 1.5,
        "dedupe_key": None, "workflow_id": 9,
    }  # fmt: skip
    (info,) = protocol.upstream_infos(json.loads(json.dumps([entry]))).values()
    assert info.finished_at == datetime.fromtimestamp(2.25, timezone.utc)
    assert info.started_at is None
    assert info.result == [1]
    assert info.workflow_id == 9
