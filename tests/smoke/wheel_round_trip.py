"""The package as a user installs it: the built wheel alone, no extras, outside the checkout.

Run by ``nox -s wheel`` (and so by CI) in a fresh virtual environment holding only the wheel and
what it declares, from a temporary folder: import pgq_sa, ``pgq-sa db upgrade``, enqueue, then
drain with a ThreadWorker and with an AsyncWorker on asyncio. A module the package imports but
does not declare fails here with ModuleNotFoundError. The server is PGQ_SA_TEST_DATABASE_URL's
(a scratch database is created there and dropped at the end).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

import pgq_sa
from pgq_sa import AsyncWorker, Job, JobStatus, Queue, ThreadWorker

JOBS = 20


def main() -> None:
    here = Path.cwd().resolve()
    package = Path(pgq_sa.__file__).resolve()
    assert "site-packages" in package.parts, f"pgq_sa was not imported from a wheel: {package}"
    assert not (here / "pgq_sa").exists(), "run this outside the checkout"
    server = make_url(os.environ["PGQ_SA_TEST_DATABASE_URL"])
    name = f"pgq_sa_wheel_{secrets.token_hex(4)}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        round_trip(url)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def round_trip(url: str) -> None:
    command = shutil.which("pgq-sa")
    assert command is not None, "the wheel installs the pgq-sa command"
    subprocess.run([command, "--database-url", url, "db", "upgrade"], check=True)
    queue = Queue()
    seen: list[int] = []

    @queue.task("smoke.sync")
    def sync_task(job: Job) -> int:
        seen.append(job.payload)
        return int(job.payload) * 2

    @queue.task("smoke.async")
    async def async_task(job: Job) -> None:
        await anyio.sleep(0)
        seen.append(job.payload)

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    ids = [queue.enqueue(engine, "smoke.sync", n) for n in range(JOBS)]
    ThreadWorker(queue, url, threads=4, handle_signals=False).run(until_empty=True)
    ids += [queue.enqueue(engine, "smoke.async", n) for n in range(JOBS)]

    async def drain() -> None:
        await AsyncWorker(queue, url, concurrency=8, handle_signals=False).run(until_empty=True)

    anyio.run(drain, backend="asyncio")
    statuses = {queue.get(engine, job_id).status for job_id in ids}
    assert statuses == {JobStatus.succeeded}, statuses
    assert queue.get(engine, ids[3]).result == 6
    assert sorted(seen) == sorted([*range(JOBS), *range(JOBS)])
    engine.dispose()
    version = sys.version.split()[0]
    print(f"wheel round trip: {len(ids)} jobs on Python {version}, from {pgq_sa.__file__}")


if __name__ == "__main__":
    main()
