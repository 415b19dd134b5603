"""``pgq-sa demo``: show the queue working end to end on whatever database is configured.

With nothing configured it runs on the embedded PostgreSQL, so a fresh machine with only Python
sees the whole flow: install the schema, enqueue inside a transaction (and roll one back), bulk
enqueue, deduplicate, and read the jobs back.
"""

from __future__ import annotations

import time

import click
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from pgq_sa.job import JobSpec
from pgq_sa.migrations import db_upgrade
from pgq_sa.queue import Queue


def run_demo(engine: Engine, schema: str, jobs: int) -> None:
    queue = Queue(schema=schema)
    db_upgrade(engine, schema=schema)
    click.echo(f"schema {schema!r} installed (pgq-sa db upgrade)")

    with Session(engine) as session:
        kept = queue.enqueue(session, "emails.send", {"to": "ada@example.com"})
        session.commit()
    with Session(engine) as session:
        dropped = queue.enqueue(session, "emails.send", {"to": "nobody@example.com"})
        session.rollback()
    click.echo(
        f"job {kept} committed with its transaction; job {dropped} rolled back: "
        f"{'gone' if queue.get(engine, dropped) is None else 'STILL THERE'}"
    )

    started = time.perf_counter()
    ids = queue.enqueue_many(engine, [JobSpec("reports.build", {"n": n}) for n in range(jobs)])
    elapsed = time.perf_counter() - started
    click.echo(
        f"enqueue_many: {len(ids)} jobs in one statement, {elapsed * 1000:.0f} ms "
        f"({len(ids) / elapsed:,.0f} jobs/s)"
    )

    first = queue.enqueue(engine, "accounts.sync", {"id": 7}, dedupe_key="account-7")
    second = queue.enqueue(engine, "accounts.sync", {"id": 7}, dedupe_key="account-7")
    click.echo(f"dedupe_key 'account-7': first enqueue -> {first}, second -> {second}")

    with engine.connect() as connection:
        rows = connection.execute(
            text(f'SELECT task, state, count(*) FROM "{schema}".jobs GROUP BY 1, 2 ORDER BY 1')
        ).all()
    click.echo("stored jobs:")
    for task, state, count in rows:
        click.echo(f"  {task:<16} {state:<10} {count}")
