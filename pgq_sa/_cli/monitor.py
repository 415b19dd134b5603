"""The monitoring commands of ``pgq-sa``: ``status``, ``jobs list``, ``workers``, ``dashboard``.

They only render what :mod:`pgq_sa._monitoring` gathers (text for people, ``--json`` with stable
keys and ISO timestamps for scripts) and register themselves on the groups of :mod:`pgq_sa._cli`,
which imports this module at its end.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy.exc import OperationalError

from pgq_sa import _monitoring as monitoring
from pgq_sa._cli.app import Context, cli, handles_errors, pass_context
from pgq_sa._cli.jobs import jobs
from pgq_sa._format import duration
from pgq_sa._monitoring import JobSummary, Status, WorkerState
from pgq_sa._ops.drive import run_sync
from pgq_sa._schema import JobStatus

CLEAR_SCREEN = "\x1b[H\x1b[2J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")
stale_after_option = click.option(
    "--stale-after",
    type=click.FloatRange(min=0.1, max=86_400),
    default=monitoring.DEFAULT_STALE_AFTER,
    show_default=True,
    metavar="SECONDS",
    help="workers of earlier releases silent for longer are shown as dead (the others are "
    "judged by their own lease, as the rescue judges them)",
)
window_option = click.option(
    "--window",
    type=click.FloatRange(min=1, max=3_600),
    default=monitoring.DEFAULT_WINDOW,
    show_default=True,
    metavar="SECONDS",
    help="period over which rates and start latency are measured",
)


# --- formatting --------------------------------------------------------------------------------


def iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def worker_json(worker: WorkerState) -> dict[str, Any]:
    return {
        "id": str(worker.id),
        "name": worker.name,
        "kind": worker.kind,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "queues": list(worker.queues) if worker.queues is not None else None,
        "tasks": list(worker.tasks),
        "concurrency": worker.concurrency,
        "started_at": iso(worker.started_at),
        "heartbeat_at": iso(worker.heartbeat_at),
        "heartbeat_age_seconds": _round(worker.heartbeat_age),
        "running": worker.running,
        "alive": worker.alive,
        "heartbeat_interval_seconds": worker.heartbeat_interval,
        "lease_timeout_seconds": worker.lease_timeout,
    }


def status_json(state: Status, schema: str) -> dict[str, Any]:
    live = state.live_workers
    return {
        "at": iso(state.at),
        "schema": schema,
        "durability": state.durability,
        "window_seconds": state.window,
        "short_window_seconds": state.short_window,
        "stale_after_seconds": state.stale_after,
        "queues": [
            {
                "name": q.name,
                "paused": q.paused,
                "due": q.due,
                "scheduled": q.scheduled,
                "queued": q.due + q.scheduled,
                "waiting": q.waiting,
                "running": q.running,
                "failed": q.failed,
                "oldest_wait_seconds": _round(q.oldest_wait),
                "rate_per_second": _round(q.rate),
                "rate_per_second_short": _round(q.rate_short),
            }
            for q in state.queues
        ],
        "tasks": [
            {
                "queue": t.queue,
                "task": t.task,
                "due": t.due,
                "scheduled": t.scheduled,
                "queued": t.due + t.scheduled,
                "waiting": t.waiting,
                "running": t.running,
                "failed": t.failed,
                "cancelled": t.cancelled,
                "oldest_wait_seconds": _round(t.oldest_wait),
                "oldest_due_at": iso(t.oldest_due_at),
                "succeeded_in_window": t.succeeded_recently,
                "failed_in_window": t.failed_recently,
                "cancelled_in_window": t.cancelled_recently,
                "rate_per_second": _round(t.rate),
                "served": t.served,
                "stranded": t.stranded,
            }
            for t in state.tasks
        ],
        "latency": [
            {
                "queue": entry.queue,
                "started": entry.started,
                "p50_seconds": _round(entry.p50, 4),
                "p95_seconds": _round(entry.p95, 4),
                "max_seconds": _round(entry.max, 4),
            }
            for entry in state.latency
        ],
        "workers": {
            "live": len(live),
            "dead": len(state.workers) - len(live),
            "list": [worker_json(w) for w in state.workers],
        },
    }


def job_summary_json(job: JobSummary) -> dict[str, Any]:
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "created_at": iso(job.created_at),
        "run_at": iso(job.run_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "worker_id": str(job.worker_id) if job.worker_id else None,
        "error": None
        if job.error_type is None
        else {"type": job.error_type, "message": job.error_message},
    }


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _task_lines(state: Status) -> list[str]:
    lines = [
        f"{'queue / task':<34}{'due':>8}{'later':>8}{'waiting':>9}{'running':>9}{'failed':>8}"
        f"{'oldest wait':>13}{'rate/s':>9}"
    ]
    for q in state.queues:
        lines.append(
            f"{_clip(q.name, 24):<24}{'paused' if q.paused else '':<10}{q.due:>8}{q.scheduled:>8}"
            f"{q.waiting:>9}{q.running:>9}{q.failed:>8}{duration(q.oldest_wait):>13}"
            f"{q.rate:>9.2f}"
        )
        for t in state.tasks:
            if t.queue != q.name:
                continue
            note = ""
            if t.stranded:
                declared = any(t.task in w.tasks for w in state.live_workers)
                note = "  ! no live worker " + (
                    "takes this queue" if declared else "declares this task"
                )
            lines.append(
                f"  {_clip(t.task, 32):<32}{t.due:>8}{t.scheduled:>8}{t.waiting:>9}{t.running:>9}"
                f"{t.failed:>8}{duration(t.oldest_wait):>13}{t.rate:>9.2f}{note}"
            )
    if not state.queues:
        lines.append("(no jobs)")
    return lines


def _worker_lines(workers: list[WorkerState]) -> list[str]:
    lines = [
        f"{'name':<32}{'kind':<8}{'host':<18}{'pid':>8}  {'queues':<16}{'started':<21}"
        f"{'heartbeat':>10}{'running':>9}"
    ]
    for w in workers:
        queues = ",".join(w.queues) if w.queues is not None else "*"
        started = w.started_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"{_clip(w.name, 31):<32}{_clip(w.kind, 7):<8}{_clip(w.hostname, 17):<18}{w.pid:>8}  "
            f"{_clip(queues, 15):<16}{started:<21}{duration(w.heartbeat_age) + ' ago':>10}"
            f"{w.running:>9}{'' if w.alive else '  DEAD (no heartbeat)'}"
        )
    return lines


def _latency_line(state: Status) -> str:
    overall = state.overall_latency
    if overall is None:
        return f"start latency (run_at to start, last {duration(state.window)}): no job started"
    return (
        f"start latency (run_at to start, last {duration(state.window)}): "
        f"p50 {duration(overall.p50)}  p95 {duration(overall.p95)}  max {duration(overall.max)}"
        f"  over {overall.started} jobs"
    )


def _status_lines(state: Status, schema: str) -> list[str]:
    live = state.live_workers
    dead = len(state.workers) - len(live)
    at = state.at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"schema {schema!r} ({state.durability}) at {at}; "
        f"rates over the last {duration(state.window)}",
        "",
        *_task_lines(state),
        "",
        _latency_line(state),
        f"workers: {len(live)} live" + (f", {dead} dead" if dead else ""),
    ]
    if state.workers:
        lines.extend("  " + line for line in _worker_lines(state.workers))
    return lines


# --- status ------------------------------------------------------------------------------------


def _gather(context: Context, window: float, stale_after: float) -> Status:
    return run_sync(
        context.engine,
        monitoring.status(context.queue.statements, window=window, stale_after=stale_after),
    )


@cli.command()
@json_option
@window_option
@stale_after_option
@pass_context
@handles_errors
def status(context: Context, as_json: bool, window: float, stale_after: float) -> None:
    """Per queue and task: due, scheduled later, waiting (workflow steps), running, failed, oldest
    wait, rate; workers.

    A task whose queued jobs no live worker declares is flagged: its jobs stay queued until a
    worker that knows it starts.
    """
    state = _gather(context, window, stale_after)
    if as_json:
        echo_json(status_json(state, context.schema))
        return
    for line in _status_lines(state, context.schema):
        click.echo(line)


# --- jobs list ---------------------------------------------------------------------------------


@jobs.command("list")
@click.option(
    "--status",
    "status_name",
    type=click.Choice([s.value for s in JobStatus]),
    help="only jobs in this state",
)
@click.option("--task", help="only jobs of this task")
@click.option("--queue", "queue_name", help="only jobs of this queue")
@click.option(
    "--limit",
    type=click.IntRange(1, monitoring.MAX_JOB_LIST),
    default=50,
    show_default=True,
    help="how many jobs, newest first",
)
@json_option
@pass_context
@handles_errors
def jobs_list(
    context: Context,
    status_name: str | None,
    task: str | None,
    queue_name: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the newest jobs (highest id first), optionally filtered."""
    operation = monitoring.list_jobs(
        context.queue.statements, status=status_name, task=task, queue=queue_name, limit=limit
    )
    found = run_sync(context.engine, operation)
    if as_json:
        echo_json([job_summary_json(job) for job in found])
        return
    click.echo(
        f"{'id':>10}  {'task':<28}{'queue':<16}{'status':<11}{'attempts':>9}{'priority':>9}  "
        f"{'created':<20}error"
    )
    for job in found:
        created = job.created_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        error = f"{job.error_type}: {job.error_message}" if job.error_type else ""
        error = " ".join(error.split())  # one line per job, whatever the message holds
        click.echo(
            f"{job.id:>10}  {_clip(job.task, 27):<28}{_clip(job.queue, 15):<16}"
            f"{job.status.value:<11}{f'{job.attempts}/{job.max_attempts}':>9}{job.priority:>9}  "
            f"{created:<20}{_clip(error, 60)}"
        )


# --- workers -----------------------------------------------------------------------------------


@cli.command()
@json_option
@stale_after_option
@pass_context
@handles_errors
def workers(context: Context, as_json: bool, stale_after: float) -> None:
    """Registered workers: live ones, and dead ones a live worker has not forgotten yet."""
    found = run_sync(context.engine, monitoring.list_workers(context.queue.statements, stale_after))
    if as_json:
        echo_json([worker_json(w) for w in found])
        return
    live = sum(w.alive for w in found)
    click.echo(f"{live} live, {len(found) - live} dead")
    if found:
        for line in _worker_lines(found):
            click.echo(line)


# --- dashboard ---------------------------------------------------------------------------------


def dashboard_frame(state: Status, schema: str) -> str:
    """One frame of the dashboard, as plain text."""
    at = state.at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    window, short = duration(state.window), duration(state.short_window)
    rate = sum(q.rate for q in state.queues)
    rate_short = sum(q.rate_short for q in state.queues)
    succeeded = sum(t.succeeded_recently for t in state.tasks)
    failed_recently = sum(t.failed_recently for t in state.tasks)
    cancelled = sum(t.cancelled_recently for t in state.tasks)
    live = state.live_workers
    dead = len(state.workers) - len(live)
    lines = [
        f"pgq-sa dashboard  schema {schema!r}  {at}",
        "",
        f"throughput: {rate:.2f}/s (last {window})  {rate_short:.2f}/s (last {short})",
        f"finished in the last {window}: {succeeded} succeeded, {failed_recently} failed, "
        f"{cancelled} cancelled",
        _latency_line(state),
        "",
        "backlog:",
        *("  " + line for line in _task_lines(state)),
        "",
        f"failures: {failed_recently} in the last {window}; "
        f"{sum(t.failed for t in state.tasks)} failed jobs kept",
    ]
    for t in state.tasks:
        if t.failed_recently:
            lines.append(f"  {t.queue}/{t.task}: {t.failed_recently} in the last {window}")
    lines.append("")
    lines.append(f"workers: {len(live)} live" + (f", {dead} dead" if dead else ""))
    if state.workers:
        lines.extend("  " + line for line in _worker_lines(state.workers))
    return "\n".join(lines)


def _run_dashboard(
    frame: Callable[[], str], interval: float, iterations: int | None, tty: bool
) -> None:
    shown = 0
    if tty:
        click.echo(HIDE_CURSOR, nl=False)
    try:
        while True:
            text = frame()
            if tty:
                click.echo(CLEAR_SCREEN + text, nl=True)
            else:
                click.echo(text + "\n")
            shown += 1
            if iterations is not None and shown >= iterations:
                return
            time.sleep(interval)
    finally:
        if tty:
            click.echo(SHOW_CURSOR, nl=False)


@cli.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=3_600),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="time between frames",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    metavar="N",
    help="stop after N frames (default: until Ctrl-C)",
)
@window_option
@stale_after_option
@pass_context
@handles_errors
def dashboard(
    context: Context, interval: float, iterations: int | None, window: float, stale_after: float
) -> None:
    """A live view: throughput, backlog, start latency, failures and workers.

    Redraws in place on a terminal; prints plain text frames otherwise (pipes, logs). Ctrl-C
    exits.
    """
    first = dashboard_frame(_gather(context, window, stale_after), context.schema)
    pending: list[str] = [first]  # a bad URL or schema fails here, before anything is drawn

    def frame() -> str:
        if pending:
            return pending.pop()
        try:
            return dashboard_frame(_gather(context, window, stale_after), context.schema)
        except OperationalError as error:
            detail = str(error.orig or error).strip().splitlines()[0]
            return f"pgq-sa dashboard  schema {context.schema!r}\n\ndatabase unreachable: {detail}"

    try:
        _run_dashboard(frame, interval, iterations, tty=sys.stdout.isatty())
    except KeyboardInterrupt:
        sys.exit(0)
