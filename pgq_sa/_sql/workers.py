"""A worker's own row: register, heartbeat (with the cancellations it must act on), deregister."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Text,
    bindparam,
    column,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables


def register_worker(tables: QueueTables) -> Executable:
    """A worker's row, with its own heartbeat interval and lease (the rescue judges it by them)."""
    workers = tables.workers
    statement = insert(workers).values(
        id=bindparam("worker_id", type_=workers.c.id.type),
        name=bindparam("name"),
        kind=bindparam("kind"),
        hostname=bindparam("hostname"),
        pid=bindparam("pid"),
        queues=bindparam("queues", type_=ARRAY(Text)),
        tasks=bindparam("tasks", type_=ARRAY(Text)),
        concurrency=bindparam("concurrency"),
        heartbeat_interval=bindparam("heartbeat_interval", type_=workers.c.heartbeat_interval.type),
        lease_timeout=bindparam("lease_timeout", type_=workers.c.lease_timeout.type),
    )
    return statement.on_conflict_do_update(
        index_elements=[workers.c.id], set_={"heartbeat_at": func.now()}
    )


def heartbeat(tables: QueueTables) -> Executable:
    """One statement per worker per interval: refresh the worker's row, and report which of its
    running jobs were asked to stop (the polling side of cancellation)."""
    s = tables.schema
    return (
        text(
            f"""
WITH beat AS (
    UPDATE "{s}".workers SET heartbeat_at = now() WHERE id = :worker_id RETURNING id
)
SELECT (SELECT count(*) FROM beat) AS alive,
       array(SELECT id FROM "{s}".jobs
              WHERE state = 'running' AND worker_id = :worker_id AND cancel_requested) AS cancel
"""
        )
        .bindparams(bindparam("worker_id", type_=tables.workers.c.id.type))
        .columns(column("alive", BigInteger), column("cancel", ARRAY(BigInteger)))
    )


def deregister_worker(tables: QueueTables) -> Executable:
    workers = tables.workers
    return workers.delete().where(workers.c.id == bindparam("worker_id", type_=workers.c.id.type))
