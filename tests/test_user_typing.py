"""User code type-checks under ``mypy --strict``: the binds are typed (a Session, Connection or
Engine; their async twins), and so are the workers, the jobs and the values handlers see."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

USER_CODE = textwrap.dedent(
    """
    from __future__ import annotations

    import anyio
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session, scoped_session, sessionmaker

    from pgq_sa import AsyncWorker, Job, JobInfo, JobSpec, Queue, ThreadWorker, Workflow

    queue = Queue()


    @queue.task("emails.send", max_attempts=5)
    def send(job: Job) -> dict[str, str]:
        return {"to": str(job.payload["to"])}


    @queue.task("images.resize")
    async def resize(job: Job) -> None:
        await anyio.sleep(0)


    engine = create_engine("postgresql+psycopg://localhost/app")
    with Session(engine) as session:
        job_id: int = queue.enqueue(session, "emails.send", {"to": "ada@example.com"})
        ids: list[int] = queue.enqueue_many(session, [JobSpec("images.resize")])
        session.commit()
    scoped = scoped_session(sessionmaker(engine))
    queue.enqueue(scoped, "emails.send", {"to": "x"})
    with engine.connect() as connection:
        info: JobInfo | None = queue.get(connection, job_id)
    flow = Workflow("pipeline")
    first = flow.add("emails.send", {"to": "x"})
    flow.add("images.resize", after=[first])
    workflow_id: int = queue.enqueue_workflow(engine, flow)
    ThreadWorker(queue, engine, threads=4).run(until_empty=True)


    async def main() -> None:
        async_engine = create_async_engine("postgresql+asyncpg://localhost/app")
        async with AsyncSession(async_engine) as session:
            await queue.enqueue_async(session, "images.resize")
            await session.commit()
        done: JobInfo = await queue.wait_async(async_engine, job_id, timeout=5)
        await AsyncWorker(queue, async_engine).run(until_empty=True)
    """
)


@pytest.mark.slow
def test_user_code_passes_mypy_strict(tmp_path):
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_a_wrong_bind_is_caught_by_the_type_checker(tmp_path):
    """The binds are not ``Any``: an async session passed to a sync call is a type error."""
    path = tmp_path / "wrong.py"
    path.write_text(
        "from sqlalchemy.ext.asyncio import AsyncSession\n"
        "from pgq_sa import Queue\n"
        "def enqueue(session: AsyncSession) -> int:\n"
        "    return Queue().enqueue(session, 't')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert 'Argument 1 to "enqueue" of "Queue" has incompatible type "AsyncSession"' in done.stdout
