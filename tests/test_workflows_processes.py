"""The workflow proof with real processes, and the 10,000-step workflow.

Hundreds of diamond and fan-in workflows run on three worker processes at once (``pgq-sa run`` with
threads, with asyncio, with trio); steps fail at random (some for good, their workflow then
retried while the others run) and the thread worker is SIGKILLed mid-run. Afterwards, from the
database alone: every workflow succeeded, no step is left waiting, queued or running, and every
attempt of every step (recorded by the handler with ``clock_timestamp()`` as it starts) began
after every step it waits for had finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from worker_helpers import make_worker, run_worker

from pgq_sa import Queue, Workflow, WorkflowStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APPS = str(Path(__file__).parent / "apps")
DIAMONDS = 200
FAN_INS = 100
FAN_IN_WIDTH = 8
DEADLINE = 180.0
WORKERS = {
    "threads": ["--threads", "4"],
    "asyncio": ["--async", "--concurrency", "8"],
    "trio": ["--async", "--backend", "trio", "--concurrency", "8"],
}

# Every attempt that started before one of its step's dependencies had finished.
EARLY_STARTS = text(
    """
SELECT a.job_id, a.attempt, a.started, p.id AS parent, p.finished_at
  FROM wf_attempts AS a
  JOIN pgq.job_dependencies AS d ON d.job_id = a.job_id
  JOIN pgq.jobs AS p ON p.id = d.depends_on
 WHERE p.finished_at IS NULL OR a.started <= p.finished_at
"""
)


def _flows() -> list[Workflow]:
    flows = []
    for n in range(DIAMONDS):
        flow = Workflow(f"diamond {n}")
        task = "wf.step" if n % 2 else "wf.step_async"
        top = flow.add(task, {"n": n}, max_attempts=2)
        left = flow.add("wf.step", after=[top], max_attempts=2)
        right = flow.add("wf.step_async", after=[top], max_attempts=2)
        flow.add(task, after=[left, right], max_attempts=2)
        flows.append(flow)
    for n in range(FAN_INS):
        flow = Workflow(f"fan-in {n}")
        parents = [
            flow.add("wf.step" if i % 2 else "wf.step_async", {"i": i}, max_attempts=2)
            for i in range(FAN_IN_WIDTH)
        ]
        flow.add("wf.step", after=parents, max_attempts=2)
        flows.append(flow)
    return flows


def _start(kind: str, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": APPS, "PGQ_SA_DATABASE_URL": url, "WF_FAIL_PERCENT": "15"}
    env.pop("DATABASE_URL", None)
    arguments = [sys.executable, "-m", "pgq_sa", "run", "workflow_app:queue", *WORKERS[kind]]
    arguments += ["--heartbeat-interval", "0.3", "--lease-timeout", "1.5", "--poll-interval", "0.2"]
    return subprocess.Popen(
        arguments, cwd=APPS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _scalar(engine, sql: str, **params: object) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(sql), params).scalar_one())


def test_workflows_across_three_worker_processes_with_failures_retries_and_a_kill(
    engine, database_url
):
    url = database_url.render_as_string(hide_password=False)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE wf_attempts (job_id bigint, attempt integer, "
                "started timestamptz NOT NULL, pid integer, PRIMARY KEY (job_id, attempt))"
            )
        )
    queue = Queue()
    with engine.begin() as connection:
        ids = [queue.enqueue_workflow(connection, flow) for flow in _flows()]
    total = _scalar(engine, "SELECT count(*) FROM pgq.jobs")
    assert total == DIAMONDS * 4 + FAN_INS * (FAN_IN_WIDTH + 1)

    workers = {kind: _start(kind, url) for kind in WORKERS}
    killed = workers["threads"]
    retried = 0
    try:
        deadline = time.monotonic() + DEADLINE
        while True:  # kill the thread worker once a quarter is done, while it runs a job
            assert time.monotonic() < deadline, "the kill never happened"
            finished = _scalar(
                engine, "SELECT count(*) FROM pgq.jobs WHERE state IN ('succeeded', 'failed')"
            )
            busy = _scalar(
                engine,
                "SELECT count(*) FROM pgq.jobs AS j JOIN pgq.workers AS w ON w.id = j.worker_id "
                "WHERE j.state = 'running' AND w.pid = :pid",
                pid=killed.pid,
            )
            if finished >= total // 4 and busy:
                killed.send_signal(signal.SIGKILL)
                killed.wait(30)
                break
            time.sleep(0.02)
        while True:  # retry what failed for good, while the rest runs
            assert time.monotonic() < deadline, "the workflows did not all succeed in time"
            with engine.connect() as connection:
                failed = connection.execute(
                    text(
                        "SELECT DISTINCT workflow_id FROM pgq.jobs WHERE state = 'failed' "
                        "AND workflow_id IS NOT NULL"
                    )
                ).scalars()
                failed = list(failed)
            for workflow_id in failed:
                retried += queue.retry_workflow(engine, workflow_id)
            unfinished = _scalar(
                engine,
                "SELECT count(*) FROM pgq.jobs WHERE state NOT IN ('succeeded', 'failed', "
                "'cancelled')",
            )
            if not failed and not unfinished:
                break
            time.sleep(0.3)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = {kind: process.communicate(timeout=60)[0] for kind, process in workers.items()}
    for kind in ("asyncio", "trio"):
        assert workers[kind].returncode == 0, outputs[kind]

    statuses = {queue.get_workflow(engine, workflow_id).status for workflow_id in ids}
    assert statuses == {WorkflowStatus.succeeded}
    assert _scalar(engine, "SELECT count(*) FROM pgq.jobs WHERE state <> 'succeeded'") == 0
    with engine.connect() as connection:
        early = connection.execute(EARLY_STARTS).all()
    assert early == []  # every start came after every dependency's (last) finish
    recorded = _scalar(engine, "SELECT count(DISTINCT job_id) FROM wf_attempts")
    assert recorded == total  # every step ran
    assert retried > 0  # some workflows failed for good and were retried...
    assert _scalar(engine, "SELECT count(*) FROM wf_attempts WHERE attempt > 1") > 0  # ...retries
    rerun = _scalar(  # the killed worker's attempts ran again elsewhere
        engine,
        "SELECT count(*) FROM wf_attempts AS a WHERE a.pid = :pid AND EXISTS "
        "(SELECT 1 FROM wf_attempts AS b WHERE b.job_id = a.job_id AND b.attempt > a.attempt "
        "AND b.pid <> :pid)",
        pid=killed.pid,
    )
    assert rerun > 0
    pids = _scalar(engine, "SELECT count(DISTINCT pid) FROM wf_attempts")
    assert pids == 3  # all three kinds of worker ran steps


def test_a_workflow_of_ten_thousand_steps_enqueues_and_completes(engine, database_url):
    queue = Queue()
    queue.task("fan.root")(lambda job: "root")
    queue.task("fan.part")(lambda job: job.payload)
    queue.task("fan.join")(lambda job: sum(v.result for v in job.upstream.values()))
    flow = Workflow("ten thousand")
    root = flow.add("fan.root")
    parts = flow.add_many("fan.part", range(9_998), after=[root])
    join = flow.add("fan.join", after=parts)
    workflow_id = queue.enqueue_workflow(engine, flow)
    assert _scalar(engine, "SELECT count(*) FROM pgq.job_dependencies") == 2 * 9_998
    run_worker(make_worker("threads", queue, database_url, size=8), "threads")
    info = queue.get_workflow(engine, workflow_id)
    assert info.status is WorkflowStatus.succeeded
    assert len(info.steps) == 10_000
    assert info.step(join).result == sum(range(9_998))
