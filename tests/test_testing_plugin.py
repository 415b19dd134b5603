"""The pytest plugin users get (pgq_sa.testing): a user's test suite, run with pytester.

The inner suite finds the plugin through its entry point, as a user's would, and runs against the
server of this run (PGQ_SA_TEST_DATABASE_URL points the plugin at it).
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from pgq_sa import Queue
from pgq_sa.testing import run_due_jobs

USER_CONFTEST = """
import os

import pytest


@pytest.fixture
def engine():  # a user's own fixtures keep their names: the plugin's all start with pgq_
    return "the user's engine"


@pytest.fixture
def database_url():
    return "the user's url"
"""

USER_TESTS = """
import anyio
import os

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from pgq_sa import JobStatus, Queue, Retry
from pgq_sa._config import make_async_engine
from pgq_sa.testing import run_due_jobs, run_due_jobs_async

queue = Queue()
follow_ups = []


@queue.task("shop.total")
def total(job):
    return sum(job.payload["prices"])


@queue.task("shop.notify")
async def notify(job):
    await anyio.sleep(0)
    return {"notified": job.payload["to"]}


@queue.task("shop.fragile", max_attempts=2)
def fragile(job):
    raise ValueError(f"no stock for {job.payload['sku']}")


@queue.task("shop.later")
def later(job):
    if job.attempt == 1:
        raise Retry(delay=600)
    return "second time lucky"


def test_sync_and_async_handlers_run_through_the_queue(pgq_engine):
    first = queue.enqueue(pgq_engine, "shop.total", {"prices": [1, 2, 3]})
    second = queue.enqueue(pgq_engine, "shop.notify", {"to": "ada"})
    delayed = queue.enqueue(pgq_engine, "shop.total", {"prices": [5]}, delay=3600)

    runs = run_due_jobs(queue, pgq_engine)

    assert {run.id: (run.status, run.result) for run in runs} == {
        first: (JobStatus.succeeded, 6),
        second: (JobStatus.succeeded, {"notified": "ada"}),
    }
    assert queue.get(pgq_engine, first).result == 6
    assert queue.get(pgq_engine, second).status == "succeeded"
    assert queue.get(pgq_engine, delayed).status == "queued"
    assert [run.id for run in run_due_jobs(queue, pgq_engine, include_delayed=True)] == [delayed]
    assert run_due_jobs(queue, pgq_engine) == []


def test_a_failing_task_is_retried_then_failed(pgq_engine):
    job_id = queue.enqueue(pgq_engine, "shop.fragile", {"sku": "X1"})

    (first,) = run_due_jobs(queue, pgq_engine)
    assert (first.attempt, first.status, first.error.type) == (1, "queued", "ValueError")
    assert run_due_jobs(queue, pgq_engine) == []  # the retry waits for its backoff

    (second,) = run_due_jobs(queue, pgq_engine, include_delayed=True)
    assert (second.attempt, second.status) == (2, "failed")
    info = queue.get(pgq_engine, job_id)
    assert (info.status, info.attempts, info.error.message) == ("failed", 2, "no stock for X1")


def test_retry_and_delayed_jobs_run_with_include_delayed(pgq_engine):
    queue.enqueue(pgq_engine, "shop.later")
    runs = run_due_jobs(queue, pgq_engine, include_delayed=True)
    assert [(run.attempt, run.status, run.result) for run in runs] == [
        (1, "queued", None),
        (2, "succeeded", "second time lucky"),
    ]


def test_a_rolled_back_enqueue_leaves_nothing_to_run(pgq_engine):
    with Session(pgq_engine) as session:
        queue.enqueue(session, "shop.total", {"prices": [1]})
        session.rollback()
    assert run_due_jobs(queue, pgq_engine) == []


def test_each_test_has_a_fresh_database(
    pgq_engine, pgq_schema, pgq_template_database, engine, database_url
):
    assert (engine, database_url) == ("the user's engine", "the user's url")
    with pgq_engine.connect() as connection:
        count = connection.execute(text(f"SELECT count(*) FROM {pgq_schema}.jobs")).scalar()
        name = connection.execute(text("SELECT current_database()")).scalar()
    assert count == 0
    assert name != pgq_template_database
    with open("databases.txt", "w") as names:  # checked by the outer test after the run
        names.write(f"{name} {pgq_template_database}")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_session_on_asyncio(pgq_database_url, anyio_backend):
    engine = make_async_engine(pgq_database_url)
    try:
        async with AsyncSession(engine) as session:
            notify_id = await queue.enqueue_async(session, "shop.notify", {"to": "bob"})
            total_id = await queue.enqueue_async(session, "shop.total", {"prices": [2, 2]})
            await session.commit()
        runs = await run_due_jobs_async(queue, engine)
    finally:
        await engine.dispose()
    assert {run.id: run.result for run in runs} == {notify_id: {"notified": "bob"}, total_id: 4}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_sync_engine_on_trio(pgq_engine, anyio_backend):
    job_id = await queue.enqueue_async(pgq_engine, "shop.fragile", {"sku": "T"})
    runs = await run_due_jobs_async(queue, pgq_engine, include_delayed=True)
    assert [(run.id, run.status) for run in runs] == [(job_id, "queued"), (job_id, "failed")]
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester, server_url: URL, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PGQ_SA_TEST_DATABASE_URL", server_url.render_as_string(hide_password=False))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user_tasks=USER_TESTS)
    return pytester


WRONG_TEST = """
from test_user_tasks import queue
from pgq_sa.testing import run_due_jobs


def test_expects_the_wrong_total(pgq_engine):
    queue.enqueue(pgq_engine, "shop.total", {"prices": [1, 1]})
    (run,) = run_due_jobs(queue, pgq_engine)
    assert run.result == 3
"""


def test_a_users_suite_runs_its_tasks_end_to_end(
    user_project: pytest.Pytester, admin_engine: Engine
):
    user_project.makepyfile(test_wrong=WRONG_TEST)
    result = user_project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: assert 2 == 3", "test_wrong.py:*: AssertionError"]
    )
    names = (user_project.path / "databases.txt").read_text().split()
    assert len(names) == 2
    assert names[0] != names[1]
    with admin_engine.connect() as connection:
        left = connection.execute(
            text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"), {"names": names}
        ).all()
    assert not left, "the plugin left its databases behind"


def test_bad_arguments_are_refused_before_any_sql():
    queue = Queue()

    @queue.task("known")
    def known(job):
        return None

    with pytest.raises(ValueError, match="not registered on this queue: unknown"):
        run_due_jobs(queue, None, tasks=["unknown"])
    with pytest.raises(TypeError, match="not one string"):
        run_due_jobs(queue, None, tasks="known")
    with pytest.raises(ValueError, match="max_jobs"):
        run_due_jobs(queue, None, max_jobs=0)
    with pytest.raises(TypeError, match=r"pgq_sa\.Queue"):
        run_due_jobs("queue", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no registered tasks"):
        run_due_jobs(Queue(), None)


@pytest.mark.skipif(
    bool(os.environ.get("PGQ_SA_TEST_DATABASE_URL")),
    reason="run once per CI run: in the session on the embedded server",
)
def test_without_a_server_the_plugin_starts_an_embedded_postgresql(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("PGQ_SA_TEST_DATABASE_URL", raising=False)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile(
        test_embedded="""
from sqlalchemy import text
from pgq_sa import Queue
from pgq_sa.testing import run_due_jobs

queue = Queue()


@queue.task("double")
def double(job):
    return job.payload * 2


def test_runs_on_the_embedded_server(pgq_engine, pgq_server_url):
    assert "host=" in pgq_server_url  # a Unix socket in the session's temporary folder
    queue.enqueue(pgq_engine, "double", 21)
    assert [run.result for run in run_due_jobs(queue, pgq_engine)] == [42]
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
