"""``pgq-sa demo``: the queue working end to end, on the embedded PostgreSQL by default.

It installs a schema of its own (``pgq_demo``, recreated each run), enqueues a few hundred jobs
of four example tasks (sync and async; one fails once and is retried; one always fails), runs a
ThreadWorker and an AsyncWorker side by side until every job has finished, and prints a summary.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import anyio
import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pgq_sa._cli.app import Context, cli, handles_errors, pass_context
from pgq_sa._config import ConfigurationError
from pgq_sa._job import Job, JobSpec
from pgq_sa._queue import Queue
from pgq_sa._schema import build_tables, validate_schema_name
from pgq_sa._sql import demo as demo_sql
from pgq_sa._worker import AsyncWorker, ThreadWorker
from pgq_sa.migrations import db_upgrade


def build_queue(schema: str) -> Queue:
    queue = Queue(schema=schema)

    @queue.task("images.resize")
    def resize(job: Job) -> dict[str, int]:
        time.sleep(random.uniform(0.001, 0.01))
        return {"width": job.payload["width"] // 2}

    @queue.task("pages.fetch")
    async def fetch(job: Job) -> str:
        await anyio.sleep(random.uniform(0.001, 0.02))
        return f"fetched {job.payload['url']}"

    @queue.task("payments.charge", max_attempts=3)
    def charge(job: Job) -> str:
        if job.attempt == 1:
            raise ConnectionError("the payment gateway timed out (it always does, once)")
        return "charged"

    @queue.task("reports.broken", max_attempts=2)
    def broken(job: Job) -> None:
        raise ValueError(f"report {job.payload['id']} has no data")

    return queue


def _counts(engine: Engine, schema: str) -> Counter[str]:
    with engine.connect() as connection:
        rows = connection.execute(demo_sql.state_counts(build_tables(schema))).all()
    return Counter({state: count for state, count in rows})


def run_demo(engine: Engine, schema: str, jobs: int, web_port: int | None = None) -> None:
    validate_schema_name(schema)  # before it is dropped and recreated
    with engine.begin() as connection:
        connection.execute(demo_sql.drop_schema(schema))
    db_upgrade(engine, schema=schema)
    click.echo(f"installed the queue in schema {schema!r} (the same steps as `pgq-sa db upgrade`)")
    queue = build_queue(schema)
    dashboard = _start_dashboard(engine, schema, web_port) if web_port is not None else None
    try:
        _run(engine, schema, jobs, queue)
        if dashboard is not None:
            click.echo(f"the dashboard keeps serving at {dashboard.url} (Ctrl-C stops it)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        if dashboard is None:
            raise
    finally:
        if dashboard is not None:
            dashboard.stop()


def _start_dashboard(engine: Engine, schema: str, port: int) -> Any:
    """The web dashboard of the demo's schema on loopback, from a thread (the 'web' extra)."""
    try:
        from pgq_sa.web._app import create_app
        from pgq_sa.web._server import BackgroundServer
    except ImportError as error:
        raise ConfigurationError(
            f"--web needs the 'web' extra ({error.name} is missing): pip install 'pgq-sa[web]'"
        ) from None
    server = BackgroundServer(create_app(engine, schema=schema, auth=None), "127.0.0.1", port)
    url = server.start()
    click.echo(f"dashboard: {url} (open it while the jobs run)")
    return server


def _run(engine: Engine, schema: str, jobs: int, queue: Queue) -> None:

    with Session(engine) as session:
        queue.enqueue(session, "pages.fetch", {"url": "https://example.com/kept"})
        session.commit()
    with Session(engine) as session:
        gone = queue.enqueue(session, "pages.fetch", {"url": "https://example.com/rolled-back"})
        session.rollback()
    click.echo(
        f"a job enqueued in a rolled-back transaction does not exist: "
        f"{queue.get(engine, gone) is None}"
    )

    specs = [
        JobSpec("images.resize", {"width": 100 + n})
        if n % 3 == 0
        else JobSpec("pages.fetch", {"url": f"https://example.com/{n}"})
        if n % 3 == 1
        else JobSpec("payments.charge", {"amount": n}, priority=5)
        for n in range(jobs)
    ]
    specs += [JobSpec("reports.broken", {"id": n}) for n in range(3)]
    started = time.perf_counter()
    queue.enqueue_many(engine, specs)
    click.echo(
        f"enqueue_many: {len(specs)} jobs in one statement "
        f"({(time.perf_counter() - started) * 1000:.0f} ms)"
    )
    total = len(specs) + 1

    thread_worker = ThreadWorker(queue, engine, threads=8, poll_interval=0.5)
    async_worker = AsyncWorker(queue, engine.url, concurrency=32, poll_interval=0.5)
    threads = [
        threading.Thread(target=thread_worker.run, daemon=True),
        threading.Thread(target=lambda: anyio.run(async_worker.run), daemon=True),
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    with click.progressbar(length=total, label="running jobs", show_pos=True) as bar:
        done = 0
        while done < total:
            time.sleep(0.1)
            counts = _counts(engine, schema)
            finished = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            bar.update(finished - done)
            done = finished
    elapsed = time.perf_counter() - started
    thread_worker.stop()
    async_worker.stop()
    for thread in threads:
        thread.join()

    tables = build_tables(schema)
    with engine.connect() as connection:
        rows = connection.execute(demo_sql.task_summary(tables)).all()
        by_worker = connection.execute(demo_sql.retries_and_workers(tables)).one()
        error = connection.execute(demo_sql.last_failure(tables)).scalar()
    click.echo(
        f"\n{total} jobs finished in {elapsed:.2f}s ({total / elapsed:,.0f} jobs/s, the retries' "
        f"backoff included) by {by_worker[1]} workers (threads and asyncio)"
    )
    click.echo(f"{'task':<18}{'state':<12}{'jobs':>6}{'attempts':>10}")
    for task, state, count, attempts in rows:
        click.echo(f"{task:<18}{state:<12}{count:>6}{attempts:>10}")
    counts = _counts(engine, schema)
    click.echo(
        f"retried: {by_worker[0]} jobs; failed for good: {counts['failed']} (last error: {error})"
    )
    click.echo("try: pgq-sa --schema pgq_demo jobs show 1 --json")


@cli.command()
@click.option("--jobs", "job_count", default=300, show_default=True, type=click.IntRange(1, 10**5))
@click.option(
    "--web",
    "web",
    is_flag=True,
    help="also serve the web dashboard on 127.0.0.1 while the jobs run (the 'web' extra)",
)
@click.option("--web-port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--demo-schema",
    default="pgq_demo",
    show_default=True,
    help="schema the demo (re)creates for itself",
)
@pass_context
@handles_errors
def demo(context: Context, job_count: int, web: bool, web_port: int, demo_schema: str) -> None:
    """Show the queue working (on the embedded PostgreSQL when nothing is configured)."""

    run_demo(
        context.engine, validate_schema_name(demo_schema), job_count, web_port if web else None
    )
