"""Small helpers shared by the tests (plain functions, no fixtures)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text


def count_jobs(engine: Engine, schema: str = "pgq", **where: Any) -> int:
    clauses = " AND ".join(f"{column} = :{column}" for column in where) or "true"
    with engine.connect() as connection:
        statement = text(f'SELECT count(*) FROM "{schema}".jobs WHERE {clauses}')
        return int(connection.execute(statement, where).scalar_one())


def snapshot(engine: Engine, schema: str = "pgq") -> list[tuple[Any, ...]]:
    """Every stored row of the queue's tables, to prove a refused call changed nothing."""
    tables = ["jobs", "queues", "workers", "schedules", "task_limits", "workflows"]
    rows: list[tuple[Any, ...]] = []
    with engine.connect() as connection:
        for table in tables:
            result = connection.execute(text(f'SELECT * FROM "{schema}".{table} ORDER BY 1'))
            rows.extend((table, *row) for row in result)
        edges = text(f'SELECT * FROM "{schema}".job_dependencies ORDER BY 1, 2')
        rows.extend(("job_dependencies", *row) for row in connection.execute(edges))
    return rows


def wait_for_listener(engine: Engine, timeout: float = 10.0) -> None:
    """Wait until a session of this database is idle after LISTEN (a worker's listener)."""
    import time

    deadline = time.monotonic() + timeout
    statement = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle' AND query LIKE 'LISTEN %'"
    )
    while True:
        with engine.connect() as connection:
            if connection.execute(statement).scalar_one():
                return
        if time.monotonic() > deadline:
            raise AssertionError("no worker listener appeared")
        time.sleep(0.02)


def until_awaited(engine: Engine, job_id: int, timeout: float = 10.0) -> None:
    """Wait until ``Queue.wait`` has flagged the job ``awaited`` (its end will be announced)."""
    import time

    deadline = time.monotonic() + timeout
    statement = text("SELECT awaited FROM pgq.jobs WHERE id = :id")
    while True:
        with engine.connect() as connection:
            if connection.execute(statement, {"id": job_id}).scalar_one():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} was never flagged awaited")
        time.sleep(0.01)


def register(engine: Engine, queue: Any, identity: Any, tasks: tuple[str, ...] = ("t",)) -> Any:
    """Register ``identity`` as a live worker (a claim needs its claimer's row alive)."""
    from pgq_sa._ops import worker as protocol
    from pgq_sa._ops.drive import run_sync

    run_sync(engine, protocol.register(queue.statements, identity, list(tasks), None, 1, 5.0, 60.0))
    return identity


def driver_url(url: Any, driver: str) -> Any:
    """``url`` (a SQLAlchemy URL) for ``driver``; pg8000 names a Unix socket its own way."""
    url = url.set(drivername=f"postgresql+{driver}")
    folder = url.query.get("host")
    if driver == "pg8000" and not url.host and isinstance(folder, str):
        socket = f"{folder}/.s.PGSQL.{url.port or 5432}"
        url = url.difference_update_query(["host"]).update_query_dict({"unix_sock": socket})
    return url


def collect_pg8000_leftovers() -> None:
    """Collect the garbage a pg8000 test left, ignoring only the BrokenPipeError of a pg8000
    socket whose server went away first (its buffered writer flushes when collected): left to
    chance, that collection happens during some later test, which ``filterwarnings=error``
    then fails. Any other unraisable exception is reported as usual."""
    import gc
    import sys

    hook = sys.unraisablehook

    def quiet(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, BrokenPipeError):
            hook(unraisable)

    sys.unraisablehook = quiet
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
