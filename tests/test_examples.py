"""Every example in examples/, run end to end in processes of its own against the test server.

Each test gives an example a fresh database (PGQ_SA_DATABASE_URL), starts it as its README says,
drives it as a user would (HTTP, a TCP line, the alembic command line), waits for the job to be
executed (``Queue.wait``, a LISTEN) and checks what was committed, then stops it with SIGTERM and
checks that it shut down cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import count_jobs
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from pgq_sa import JobStatus, Queue
from pgq_sa.migrations import db_current, head_revision, versions_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START_TIMEOUT = 60.0
JOB_TIMEOUT = 60.0


def _environment(url: URL, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PGQ_SA_SCHEMA"}}
    env["PGQ_SA_DATABASE_URL"] = url.render_as_string(hide_password=False)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextmanager
def _process(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A running example process; killed at the end if the test did not stop it."""
    process = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def _stop(process: subprocess.Popen[str], *, exit_codes: tuple[int, ...] = (0,)) -> str:
    """SIGTERM, as a process manager would; the process must exit cleanly. Returns its output."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode in exit_codes, output
    return output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _request(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_until_serving(process: subprocess.Popen[str], port: int) -> None:
    """Poll the health endpoint until it answers (deadline START_TIMEOUT)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the example exited with {process.returncode}: {output}")
        try:
            if _request(port, "/health") == (200, {"ok": True}):
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            pytest.fail("the example did not start serving in time")
        time.sleep(0.05)


def _scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql)).scalar()


def _job_id_sequence(engine: Engine) -> int:
    return int(_scalar(engine, "SELECT last_value FROM pgq.jobs_id_seq"))


def test_flask_app_with_a_thread_worker(database_url: URL, engine: Engine):
    folder = EXAMPLES / "flask_app"
    port = _free_port()
    env = _environment(database_url, PORT=str(port))
    with (
        _process([sys.executable, "app.py"], folder, env) as app,
        _process([sys.executable, "worker.py"], folder, env) as worker,
    ):
        _wait_until_serving(app, port)
        status, created = _request(
            port, "/orders", {"sku": "mug", "quantity": 2, "email": "ada@example.com"}
        )
        assert status == 201, created
        info = Queue().wait(engine, created["job"], timeout=JOB_TIMEOUT)
        assert info.status is JobStatus.succeeded, info.error
        assert info.result == {"sent_to": "ada@example.com"}
        assert _scalar(engine, "SELECT confirmed_at IS NOT NULL FROM orders") is True
        assert _scalar(engine, "SELECT stock FROM products WHERE sku = 'mug'") == 1

        # Out of stock: the enqueue ran (the id sequence moved) but rolled back with the order.
        sequence = _job_id_sequence(engine)
        status, refused = _request(
            port, "/orders", {"sku": "mug", "quantity": 2, "email": "bob@example.com"}
        )
        assert status == 409, refused
        assert _job_id_sequence(engine) > sequence
        assert count_jobs(engine) == 1
        assert _scalar(engine, "SELECT count(*) FROM orders") == 1
        assert _scalar(engine, "SELECT stock FROM products WHERE sku = 'mug'") == 1

        output = _stop(worker)
        assert "to ada@example.com: 2 x mug confirmed" in output
        assert "stopped" in output
        assert _scalar(engine, "SELECT count(*) FROM pgq.workers") == 0


def test_fastapi_service_with_an_async_worker_in_its_lifespan(database_url: URL, engine: Engine):
    port = _free_port()
    env = _environment(database_url, PORT=str(port))
    with _process([sys.executable, "app.py"], EXAMPLES / "fastapi_service", env) as app:
        _wait_until_serving(app, port)
        status, created = _request(port, "/signups", {"email": "ada@example.com"})
        assert status == 201, created
        info = Queue().wait(engine, created["job"], timeout=JOB_TIMEOUT)
        assert info.status is JobStatus.succeeded, info.error
        assert info.result == {"welcomed": "ada@example.com"}
        assert _scalar(engine, "SELECT welcomed_at IS NOT NULL FROM signups") is True

        status, refused = _request(port, "/signups", {"email": "ada@example.com"})
        assert status == 409, refused
        assert count_jobs(engine) == 1
        assert _scalar(engine, "SELECT count(*) FROM signups") == 1

        # uvicorn shuts down gracefully, the lifespan stops the worker, then uvicorn re-raises
        # the signal so that the process reports it (exit status -SIGTERM).
        output = _stop(app, exit_codes=(0, -signal.SIGTERM))
        assert "Application shutdown complete" in output
        assert "welcome, ada@example.com!" in output
        assert _scalar(engine, "SELECT count(*) FROM pgq.workers") == 0


def test_trio_service_with_an_async_worker_on_a_sync_engine(database_url: URL, engine: Engine):
    env = _environment(database_url, PORT="0")
    command = [sys.executable, "service.py"]
    with _process(command, EXAMPLES / "trio_service", env) as service:
        assert service.stdout is not None
        for line in service.stdout:  # log lines come first; EOF means the service died
            if line.startswith("listening on "):
                port = int(line.rsplit(":", 1)[1])
                break
        else:
            pytest.fail(f"the service exited with {service.wait()}")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"the quick brown fox\n")
            answer = client.makefile().readline()
        assert answer.startswith("queued job "), answer
        info = Queue().wait(engine, int(answer.split()[-1]), timeout=JOB_TIMEOUT)
        assert info.status is JobStatus.succeeded, info.error
        assert info.result == 4
        assert _scalar(engine, "SELECT words FROM lines") == 4

        _stop(service)
        assert _scalar(engine, "SELECT count(*) FROM pgq.workers") == 0


def test_order_pipeline_on_both_workers(database_url: URL, engine: Engine):
    """A workflow enqueued with its order row, its steps shared by a ThreadWorker process and
    an AsyncWorker process; a declined card runs the compensation step."""
    from pgq_sa.migrations import db_upgrade

    folder = EXAMPLES / "order_pipeline"
    env = _environment(database_url)
    db_upgrade(engine)
    queue = Queue()
    with (
        _process([sys.executable, "worker.py", "threads"], folder, env) as threads,
        _process([sys.executable, "worker.py", "asyncio"], folder, env) as asyncio_worker,
    ):
        pids: set[int] = set()
        orders = {}
        for items in (["mug", "mug"], ["lamp", "lamp"]) * 3:
            placed = subprocess.run(
                [sys.executable, "place_order.py", *items],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            order_id, workflow_id = map(int, re.findall(r"\d+", placed.stdout))
            orders[order_id] = (items, workflow_id)
        for order_id, (items, workflow_id) in orders.items():
            info = queue.wait_workflow(engine, workflow_id, timeout=JOB_TIMEOUT)
            steps = {step.task: step for step in info.steps}
            pids |= {s.result["pid"] for s in info.steps if isinstance(s.result, dict)}
            status = _scalar(engine, f"SELECT status FROM orders WHERE id = {order_id}")
            if items == ["mug", "mug"]:
                assert info.status.value == "succeeded", info
                assert status == "shipped"
                assert steps["orders.ship"].result["shipped"] == ["mug", "mug"]
                assert steps["orders.release"].result["released"] is False
            else:  # 180 > the card limit: declined, the packing cancelled, the stock back
                assert info.status.value == "failed", info
                assert status == "cancelled"
                assert steps["orders.charge"].error.message == "card declined for 180"
                assert steps["orders.ship"].error.type == "pgq_sa.UpstreamFailed"
                assert steps["orders.release"].result["released"] is True
        stock = _scalar(
            engine, "SELECT string_agg(sku || '=' || stock, ',' ORDER BY sku) FROM products"
        )
        assert stock == "lamp=10,mug=4"  # three orders of two mugs shipped; lamps all back
        assert len(pids) == 2  # both workers ran steps
        output = _stop(threads) + _stop(asyncio_worker)
        assert "shipped mug, mug" in output
        assert "card declined for 180; stock released" in output
        assert _scalar(engine, "SELECT count(*) FROM pgq.workers") == 0


ALEMBIC_PROJECT = EXAMPLES / "alembic_project"


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        args, cwd=ALEMBIC_PROJECT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _alembic(*args: str) -> list[str]:
    return [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_PROJECT / "alembic.ini"), *args]


def _versions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


@pytest.mark.parametrize(
    ("door", "commands", "alembic_versions"),
    [
        pytest.param(
            "standalone",
            [_alembic("upgrade", "head"), [sys.executable, "-m", "pgq_sa", "db", "upgrade"]],
            {"0001"},
            id="standalone",
        ),
        pytest.param(
            "branch",
            [_alembic("-n", "branch", "upgrade", "heads")],
            {"0001", head_revision()},
            id="branch",
        ),
        pytest.param("chain", [_alembic("-n", "chain", "upgrade", "head")], {"0002"}, id="chain"),
    ],
)
def test_alembic_project_installs_the_queue_through_each_door(
    door: str,
    commands: list[list[str]],
    alembic_versions: set[str],
    empty_database_url: URL,
    empty_engine: Engine,
):
    env = _environment(empty_database_url)
    for command in commands:
        _run(command, env)
    assert db_current(empty_engine) == head_revision()
    assert _versions(empty_engine) == alembic_versions
    assert _scalar(empty_engine, "SELECT count(*) FROM notes") == 0
    job_id = Queue().enqueue(empty_engine, "notes.index", {"note": 1})
    assert Queue().get(empty_engine, job_id) is not None
    if door == "branch":  # the project's autogenerate leaves the queue's schema alone
        assert "No new upgrade operations detected" in _run(_alembic("-n", door, "check"), env)


def test_the_alembic_example_points_at_this_checkouts_revisions():
    """The example's door-2 path is where versions_path() finds pgq_sa's revisions here."""
    ini = (ALEMBIC_PROJECT / "alembic.ini").read_text()
    assert "%(here)s/../../alembic/versions" in ini
    assert (ALEMBIC_PROJECT / "../../alembic/versions").resolve() == Path(versions_path())
