"""Workflows on the real workers (ThreadWorker, AsyncWorker on asyncio and on trio): steps added at
run time commit with the adding step's success (and only then), wait_workflow is woken by the
finishes, events name the workflow, and a timeout or a lost lease keeps the rule.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from sqlalchemy import text
from test_transactional import _lose_lease
from worker_helpers import KINDS, make_worker, run_worker, start_worker

from pgq_sa import Job, JobStatus, Queue, Retry, Workflow, WorkflowStatus
from pgq_sa._config import make_async_engine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fan_out_queue(asynchronous: bool) -> Queue:
    queue = Queue()

    def split(job: Job) -> str:
        parts = [job.add_to_workflow("part", {"n": n}) for n in range(job.payload["parts"])]
        job.add_to_workflow("merge", after=parts, before=job.dependents)
        return "split"

    async def split_async(job: Job) -> str:
        await anyio.sleep(0)
        return split(job)

    queue.task("split")(split_async if asynchronous else split)
    queue.task("part")(lambda job: job.payload["n"])
    queue.task("merge")(lambda job: sorted(v.result for v in job.upstream.values()))
    queue.task("join")(lambda job: {v.task: v.result for v in job.upstream.values()})
    return queue


@pytest.mark.parametrize("asynchronous", [False, True], ids=["def", "async-def"])
def test_steps_added_at_run_time_run_before_the_steps_that_wait(
    kind, asynchronous, engine, database_url
):
    queue = _fan_out_queue(asynchronous)
    flow = Workflow("discovered")
    split = flow.add("split", {"parts": 4})
    join = flow.add("join", after=[split])
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get_workflow(engine, workflow_id)
    assert info.status is WorkflowStatus.succeeded
    assert [s.task for s in info.steps] == [
        "split",
        "join",
        "part",
        "part",
        "part",
        "part",
        "merge",
    ]
    assert info.step(join).result == {"split": "split", "merge": [0, 1, 2, 3]}
    merge = info.steps[-1]
    assert info.dependencies[info.step(join).id] == (info.step(split).id, merge.id)
    assert info.dependencies[merge.id] == tuple(s.id for s in info.steps[2:6])


@pytest.mark.parametrize("kind", ["threads", "asyncio"])  # trio runs def tasks like threads
def test_a_transactional_step_adds_steps_with_its_own_writes(kind, engine, database_url):
    queue = Queue()
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE effects (job_id bigint)"))

    @queue.task("tx.split", transactional=True)
    def split(job):
        job.connection.execute(text("INSERT INTO effects VALUES (:id)"), {"id": job.id})
        job.add_to_workflow("part", 1, before=job.dependents)
        return "ok"

    if kind == "asyncio":

        @queue.task("tx.split_async", transactional=True)
        async def split_async(job):
            await job.connection.execute(text("INSERT INTO effects VALUES (:id)"), {"id": job.id})
            job.add_to_workflow("part", 1, before=job.dependents)
            return "ok"

    queue.task("part")(lambda job: job.payload)
    queue.task("join")(lambda job: len(job.upstream))
    splits = ["tx.split", "tx.split_async"] if kind == "asyncio" else ["tx.split"]
    ids = []
    for task in splits:
        flow = Workflow()
        flow.add("join", after=[flow.add(task)])
        ids.append(queue.enqueue_workflow(engine, flow))
    run_worker(make_worker(kind, queue, database_url), kind)
    for workflow_id in ids:
        info = queue.get_workflow(engine, workflow_id)
        assert info.status is WorkflowStatus.succeeded
        assert info.steps[1].result == 2
        assert [s.task for s in info.steps][2:] == ["part"]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM effects")).scalar_one() == len(ids)


def test_an_attempt_that_does_not_succeed_adds_nothing(kind, engine, database_url):
    queue = Queue()

    @queue.task("split")
    def split(job):
        job.add_to_workflow("part", job.attempt, before=job.dependents)
        if job.attempt == 1:
            raise Retry(delay=0)
        return job.attempt

    queue.task("part")(lambda job: job.payload)
    queue.task("join")(lambda job: sorted(v.result for v in job.upstream.values()))
    flow = Workflow()
    flow.add("join", after=[flow.add("split")])
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get_workflow(engine, workflow_id)
    assert [s.task for s in info.steps] == ["split", "join", "part"]
    assert info.steps[2].payload == 2  # from the second attempt only
    assert info.steps[1].result == [2, 2]


def test_steps_added_by_an_attempt_that_lost_its_lease_are_rolled_back(engine, database_url):
    queue = Queue()
    lost = threading.Event()

    @queue.task("split")
    def split(job):
        job.add_to_workflow("part", job.attempt, before=job.dependents)
        if job.attempt == 1:
            _lose_lease(queue, engine, job)  # rescued while it runs: its success is stale
            lost.set()
        return job.attempt

    queue.task("part")(lambda job: job.payload)
    queue.task("join")(lambda job: sorted(v.result for v in job.upstream.values()))
    flow = Workflow()
    flow.add("join", after=[flow.add("split")])
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_worker(make_worker("threads", queue, database_url), "threads")
    assert lost.is_set()
    info = queue.get_workflow(engine, workflow_id)
    assert info.status is WorkflowStatus.succeeded
    assert [s.task for s in info.steps] == ["split", "join", "part"]
    assert info.steps[0].attempts == 2
    assert info.steps[2].payload == 2


def test_bad_additions_fail_the_attempt_with_a_clear_error(engine, database_url):
    queue = Queue()

    @queue.task("split", max_attempts=1)
    def split(job):
        job.add_to_workflow("part", before=list(job.upstream))  # a finished step cannot wait
        return "never"

    @queue.task("plain", max_attempts=1)
    def plain(job):
        job.add_to_workflow("part")

    queue.task("part")(lambda job: None)
    flow = Workflow()
    flow.add("split", after=[flow.add("part")])
    workflow_id = queue.enqueue_workflow(engine, flow)
    plain_id = queue.enqueue(engine, "plain")
    run_worker(make_worker("threads", queue, database_url), "threads")

    failed = queue.get(engine, plain_id)
    assert failed.status is JobStatus.failed
    assert "is not a workflow step" in failed.error.message
    info = queue.get_workflow(engine, workflow_id)
    assert [s.task for s in info.steps] == ["part", "split"]  # nothing was added
    assert info.steps[1].status is JobStatus.failed
    assert "only waiting steps of the same workflow" in info.steps[1].error.message


def test_a_timed_out_step_cancels_its_dependents(kind, engine, database_url):
    queue = Queue()

    @queue.task("slow", timeout=0.2, max_attempts=1)
    def slow(job):
        job.wait_cancelled(10)

    queue.task("after")(lambda job: None)
    flow = Workflow()
    flow.add("after", after=[flow.add("slow")])
    workflow_id = queue.enqueue_workflow(engine, flow)
    run_worker(make_worker(kind, queue, database_url), kind)
    info = queue.get_workflow(engine, workflow_id)
    assert [s.status.value for s in info.steps] == ["failed", "cancelled"]
    assert info.steps[1].error.type == "pgq_sa.UpstreamFailed"


# --- waiting ------------------------------------------------------------------------------------


def _chain_queue(release: threading.Event) -> Queue:
    queue = Queue()

    @queue.task("gate")
    def gate(job):
        release.wait(30)

    queue.task("link")(lambda job: job.payload)
    return queue


def _chain(queue: Queue, engine, links: int = 3) -> int:
    flow = Workflow()
    step = flow.add("gate")
    for n in range(links):
        step = flow.add("link", n, after=[step])
    return queue.enqueue_workflow(engine, flow)


def test_wait_workflow_returns_once_every_step_finished(engine, database_url):
    release = threading.Event()
    queue = _chain_queue(release)
    workflow_id = _chain(queue, engine)
    running = start_worker("threads", queue, database_url)
    try:
        with pytest.raises(TimeoutError, match=f"workflow {workflow_id} did not finish"):
            queue.wait_workflow(engine, workflow_id, timeout=0.3)
        with ThreadPoolExecutor(1) as pool:
            waiter = pool.submit(queue.wait_workflow, engine, workflow_id, 60)
            time.sleep(0.2)
            assert not waiter.done()
            release.set()
            info = waiter.result(timeout=60)
    finally:
        running.stop()
    assert info.status is WorkflowStatus.succeeded
    assert [s.result for s in info.steps] == [None, 0, 1, 2]
    with pytest.raises(LookupError, match="no workflow"):
        queue.wait_workflow(engine, 10**12, timeout=1)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_wait_workflow_async(backend, engine, database_url):
    release = threading.Event()
    queue = _chain_queue(release)
    workflow_id = _chain(queue, engine)
    running = start_worker("threads", queue, database_url)

    async def main() -> WorkflowStatus:
        bind = make_async_engine(database_url) if backend == "asyncio" else engine
        try:
            with pytest.raises(TimeoutError):
                await queue.wait_workflow_async(bind, workflow_id, timeout=0.3)
            release.set()
            info = await queue.wait_workflow_async(bind, workflow_id, timeout=60)
            return info.status
        finally:
            if backend == "asyncio":
                await bind.dispose()

    try:
        assert anyio.run(main, backend=backend) is WorkflowStatus.succeeded
    finally:
        running.stop()


def test_events_name_the_workflow(engine, database_url):
    queue = Queue()
    queue.task("a")(lambda job: None)
    queue.task("b")(lambda job: None)
    seen: list[tuple[str, int | None]] = []
    queue.events.subscribe(lambda event: seen.append((event.kind, event.workflow_id)))
    flow = Workflow()
    flow.add("b", after=[flow.add("a")])
    workflow_id = queue.enqueue_workflow(engine, flow)
    plain = queue.enqueue(engine, "a")
    run_worker(make_worker("threads", queue, database_url), "threads")
    assert plain
    by_kind: dict[str, list[int | None]] = {}
    for kind, workflow in seen:
        by_kind.setdefault(kind, []).append(workflow)
    for kind in ("enqueued", "started", "succeeded"):
        assert sorted(by_kind[kind], key=lambda w: (w is None, w)) == [workflow_id] * 2 + [None]
