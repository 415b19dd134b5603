"""``pgq-sa enqueue`` and ``pgq-sa jobs show|cancel|retry``."""

from __future__ import annotations

import json
from typing import Any

import click

from pgq_sa._cli.app import Context, cli, fail, handles_errors, pass_context
from pgq_sa._job import JobInfo
from pgq_sa._ops import producer as operations
from pgq_sa._ops.drive import run_sync


def _parse_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON: {error}", param_hint="JSON") from None


@cli.command()
@click.argument("task")
@click.argument("payload", metavar="[JSON]", required=False)
@click.option("--priority", type=int, help="higher runs first (-32768..32767)")
@click.option("--delay", type=float, help="seconds to wait before the job may run")
@click.option("--queue", "queue_name", help="queue name (default: the task's, else 'default')")
@click.option("--dedupe-key", help="skip if a live job holds this key (prints its id)")
@click.option("--max-attempts", type=int)
@pass_context
@handles_errors
def enqueue(
    context: Context,
    task: str,
    payload: str | None,
    priority: int | None,
    delay: float | None,
    queue_name: str | None,
    dedupe_key: str | None,
    max_attempts: int | None,
) -> None:
    """Enqueue one job of TASK with an optional JSON payload; prints the job id."""
    queue = context.queue
    value = _parse_json(payload)
    job = queue._new_job(  # validated before the database is even looked up
        task,
        value,
        priority=priority,
        delay=delay,
        run_at=None,
        dedupe_key=dedupe_key,
        queue=queue_name,
        max_attempts=max_attempts,
    )
    (job_id,) = run_sync(context.engine, operations.enqueue(queue.statements, [job]))
    click.echo(job_id)


def _job_json(info: JobInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "task": info.task,
        "queue": info.queue,
        "status": info.status.value,
        "attempts": info.attempts,
        "max_attempts": info.max_attempts,
        "priority": info.priority,
        "payload": info.payload,
        "result": info.result,
        "error": None
        if info.error is None
        else {
            "type": info.error.type,
            "message": info.error.message,
            "traceback": info.error.traceback,
        },
        "created_at": info.created_at.isoformat(),
        "run_at": info.run_at.isoformat(),
        "started_at": info.started_at.isoformat() if info.started_at else None,
        "finished_at": info.finished_at.isoformat() if info.finished_at else None,
        "dedupe_key": info.dedupe_key,
    }


@cli.group()
def jobs() -> None:
    """Inspect and control individual jobs."""


job_id_argument = click.argument("job_id", type=click.IntRange(1, 2**63 - 1))


@jobs.command("show")
@job_id_argument
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_context
@handles_errors
def jobs_show(context: Context, job_id: int, as_json: bool) -> None:
    """Show one job."""
    info = context.queue.get(context.engine, job_id)
    if info is None:
        fail(f"no job with id {job_id}")
        return
    data = _job_json(info)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key == "error" and value:
            click.echo(f"{key:>13}: {value['type']}: {value['message']}")
            if value.get("traceback"):
                click.echo(value["traceback"].rstrip())
        else:
            click.echo(f"{key:>13}: {json.dumps(value) if key in ('payload', 'result') else value}")


@jobs.command("cancel")
@job_id_argument
@pass_context
@handles_errors
def jobs_cancel(context: Context, job_id: int) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    if not context.queue.cancel(context.engine, job_id):
        fail(f"job {job_id} is not queued or running (or does not exist)")
    click.echo(f"job {job_id} cancelled")


@jobs.command("retry")
@job_id_argument
@pass_context
@handles_errors
def jobs_retry(context: Context, job_id: int) -> None:
    """Queue a failed or cancelled job again."""
    if not context.queue.retry(context.engine, job_id):
        fail(f"job {job_id} is not failed or cancelled (or its dedupe key is held by a live job)")
    click.echo(f"job {job_id} queued again")
