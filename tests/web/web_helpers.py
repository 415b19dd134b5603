"""Helpers of the dashboard tests: seeding rows the pages show, and talking to the app the way
a browser does (the CSRF token from the page, an Origin header on every POST)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from sqlalchemy import Engine, text

from pgq_sa import Queue

ORIGIN = "http://testserver"
TRACEBACK = (
    'Traceback (most recent call last):\n  File "tasks.py", line 3, in charge\n'
    "ConnectionError: gateway"
)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def post(
    client: Any,
    path: str,
    data: dict[str, Any] | None = None,
    *,
    page: str = "/jobs",
    origin: str | None = ORIGIN,
    **kwargs: Any,
) -> Any:
    """POST ``data`` to ``path`` with the token of ``page`` (as a browser would)."""
    token = csrf_token(client.get(page).text)
    headers = {"origin": origin} if origin else {}
    return client.post(
        path,
        data={"csrf": token, **(data or {})},
        headers=headers,
        follow_redirects=False,
        **kwargs,
    )


def message(html: str) -> str:
    found = re.search(r'<p class="message">(.*?)</p>', html, re.S)
    return found.group(1) if found else ""


def fail_jobs(
    engine: Engine,
    job_ids: list[int],
    error_type: str = "ConnectionError",
    message_text: str = "the gateway timed out",
    traceback: str = TRACEBACK,
) -> None:
    """Turn queued jobs into failed ones, as a worker that ran out of attempts leaves them."""
    error = json.dumps(
        {"type": error_type, "message": message_text, "traceback": traceback, "attempt": 1}
    )
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE pgq.jobs SET state = 'failed', attempt = 1, max_attempts = 1, "
                "started_at = now() - interval '2 seconds', finished_at = now(), "
                "error = CAST(:error AS jsonb) WHERE id = ANY(:ids)"
            ),
            {"error": error, "ids": job_ids},
        )


def succeed_jobs(engine: Engine, job_ids: list[int]) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE pgq.jobs SET state = 'succeeded', attempt = 1, "
                "started_at = now() - interval '1 second', finished_at = now(), "
                "result = '{\"ok\": true}' WHERE id = ANY(:ids)"
            ),
            {"ids": job_ids},
        )


def add_worker(engine: Engine, name: str = "worker-1", *, age: float = 0.0) -> uuid.UUID:
    """A worker row whose last heartbeat was ``age`` seconds ago."""
    worker_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pgq.workers (id, name, kind, hostname, pid, tasks, concurrency, "
                "heartbeat_at) VALUES (:id, :name, 'thread', 'host-a', 4242, ARRAY['t'], 8, "
                "now() - :age * interval '1 second')"
            ),
            {"id": worker_id, "name": name, "age": age},
        )
    return worker_id


def add_schedule(engine: Engine, name: str = "reports.nightly", enabled: bool = True) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pgq.schedules (name, task, expression, enabled, next_fire_at) "
                "VALUES (:name, :name, '0 3 * * *', :enabled, now() + interval '3 hours')"
            ),
            {"name": name, "enabled": enabled},
        )


def add_workflow(
    engine: Engine, name: str, steps: dict[str, str], edges: list[tuple[str, str]]
) -> tuple[int, dict[str, int]]:
    """SEEDED DIRECTLY, not through Queue.enqueue_workflow (the workflow feature is built on
    another branch): a workflows row, one job per step in the given state, and the edges
    ``(upstream, downstream)`` in job_dependencies. Returns the workflow id and step ids."""
    with engine.begin() as connection:
        workflow_id = connection.execute(
            text("INSERT INTO pgq.workflows (name) VALUES (:name) RETURNING id"), {"name": name}
        ).scalar_one()
        ids: dict[str, int] = {}
        for step, state in steps.items():
            waiting_for = sum(
                1 for up, down in edges if down == step and steps[up] not in ("succeeded",)
            )
            ids[step] = connection.execute(
                text(
                    "INSERT INTO pgq.jobs (task, state, workflow_id, waiting_for, attempt, "
                    "worker_id, started_at, finished_at, on_upstream_failure) "
                    "VALUES (:task, CAST(:state AS pgq.job_state), :workflow, :waiting, "
                    ":attempt, CASE WHEN :state = 'running' THEN gen_random_uuid() END, "
                    "CASE WHEN :state IN ('running', 'succeeded', 'failed') THEN now() END, "
                    "CASE WHEN :state IN ('succeeded', 'failed', 'cancelled') THEN now() END, "
                    "'cancel') RETURNING id"
                ),
                {
                    "task": step,
                    "state": state,
                    "workflow": workflow_id,
                    "waiting": waiting_for if state == "waiting" else 0,
                    "attempt": 1 if state in ("running", "succeeded", "failed") else 0,
                },
            ).scalar_one()
        for up, down in edges:
            connection.execute(
                text("INSERT INTO pgq.job_dependencies (depends_on, job_id) VALUES (:up, :down)"),
                {"up": ids[up], "down": ids[down]},
            )
    return workflow_id, ids


def seed(engine: Engine, queue: Queue | None = None) -> dict[str, Any]:
    """A little of everything: queued, failed (two error types), succeeded jobs, a worker,
    a schedule, a paused queue and a workflow."""
    queue = queue or Queue()
    queued = [queue.enqueue(engine, "emails.send", {"to": f"u{n}@example.com"}) for n in range(3)]
    charge = [
        queue.enqueue(engine, "payments.charge", {"amount": n}, queue="billing") for n in range(4)
    ]
    fail_jobs(engine, charge[:3])
    fail_jobs(engine, charge[3:], "ValueError", "amount must be positive")
    done = [queue.enqueue(engine, "images.resize", {"width": 640}) for _ in range(5)]
    succeed_jobs(engine, done)
    queue.pause(engine, "media")
    add_worker(engine, "worker-live")
    add_worker(engine, "worker-dead", age=600)
    add_schedule(engine)
    workflow_id, steps = add_workflow(
        engine,
        "orders.fulfil",
        {
            "stock.reserve": "succeeded",
            "payments.charge": "failed",
            "shipping.label": "waiting",
            "emails.confirm": "waiting",
        },
        [
            ("stock.reserve", "payments.charge"),
            ("payments.charge", "shipping.label"),
            ("shipping.label", "emails.confirm"),
        ],
    )
    return {
        "queued": queued,
        "failed": charge,
        "succeeded": done,
        "workflow": workflow_id,
        "steps": steps,
    }


def add_history(engine: Engine) -> None:
    """Finished jobs over the last hour (a rising and falling load, a burst of failures), for
    the overview's chart and the tasks page's rates and run times."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pgq.jobs (queue, task, state, attempt, run_at, started_at, "
                "finished_at, worker_id, error) "
                "SELECT q, t, CASE WHEN bad THEN 'failed'::pgq.job_state ELSE 'succeeded' END, "
                "1, at - interval '40 ms', at - (20 + i % 400) * interval '1 ms', at, "
                "gen_random_uuid(), CASE WHEN bad THEN "
                '\'{"type": "TimeoutError", "message": "upstream took too long"}\'::jsonb '
                "END "
                "FROM generate_series(1, 59) AS minute, "
                "LATERAL generate_series(1, (45 + 30 * sin(minute / 7.0) "
                "+ 12 * cos(minute / 1.7))::int) AS i, "
                "LATERAL (SELECT now() - (60 - minute) * interval '1 minute' "
                "+ (i % 60) * interval '1 second' AS at, "
                "minute BETWEEN 38 AND 43 AND i % 5 = 0 AS bad, "
                "(ARRAY['default', 'billing', 'media'])[1 + i % 3] AS q, "
                "(ARRAY['emails.send', 'payments.charge', 'images.resize'])[1 + i % 3] AS t) AS x"
            )
        )
