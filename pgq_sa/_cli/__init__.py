"""The ``pgq-sa`` command line: migrations, enqueueing, inspecting and controlling jobs and queues.

Environment variables: PGQ_SA_DATABASE_URL (else DATABASE_URL, else the embedded PostgreSQL) and
PGQ_SA_SCHEMA (else ``pgq``). User mistakes end with a one-line message and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from pgq_sa import migrations
from pgq_sa._config import ConfigurationError, make_engine, resolve_url, schema_from_environment
from pgq_sa._job import JobInfo
from pgq_sa._ops import producer as operations
from pgq_sa._ops.drive import run_sync
from pgq_sa._queue import Queue

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2
EXIT_FAILURE = 1


@dataclass
class Context:
    """What every command needs: where the database is and which schema holds the queue."""

    database_url: str | None
    schema: str
    _engine: Engine | None = None

    @property
    def queue(self) -> Queue:
        return Queue(schema=self.schema)

    _url: URL | None = None

    @property
    def url(self) -> URL:
        """The resolved database URL, as given (the driver is chosen per engine kind)."""
        if self._url is None:
            resolved = resolve_url(self.database_url)
            if resolved.source.startswith("embedded"):
                click.echo(f"Using the {resolved.source}", err=True)
            self._url = resolved.url
        return self._url

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a message and an exit code."""
    try:
        yield
    except (ConfigurationError, migrations.MigrationError) as error:
        _fail(str(error))
    except (ValueError, TypeError) as error:
        _fail(str(error), EXIT_USAGE)
    except OperationalError as error:
        _fail(f"cannot reach the database: {error.orig}".strip())
    except DBAPIError as error:
        detail = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        if "does not exist" in detail and ("relation" in detail or "schema" in detail):
            detail += " (is the queue installed? run `pgq-sa db upgrade`)"
        _fail(f"the database refused: {detail}")


def handles_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _user_errors():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


pass_context = click.make_pass_decorator(Context)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Environment: PGQ_SA_DATABASE_URL (else DATABASE_URL, else the embedded PostgreSQL "
    "from the 'embedded' extra), PGQ_SA_SCHEMA (default 'pgq'), PGQ_SA_EMBEDDED_DIR.",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="PostgreSQL URL [env PGQ_SA_DATABASE_URL, then DATABASE_URL; default: embedded]",
)
@click.option(
    "--schema", metavar="NAME", help="schema holding the queue [env PGQ_SA_SCHEMA; default pgq]"
)
@click.version_option(package_name="pgq-sa")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, schema: str | None) -> None:
    """pgq-sa: a PostgreSQL job queue for SQLAlchemy applications."""
    from pgq_sa._schema import validate_schema_name

    name = schema_from_environment(schema)
    try:
        validate_schema_name(name)
    except (TypeError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="--schema") from None
    ctx.obj = Context(database_url=database_url, schema=name)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    """Console entry point."""
    cli(auto_envvar_prefix=None)


# --- db ----------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Install, upgrade and inspect the queue's schema (Alembic revisions shipped with pgq_sa)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_context
@handles_errors
def db_upgrade(context: Context, revision: str) -> None:
    """Apply revisions up to REVISION (default: head)."""
    migrations.db_upgrade(context.engine, schema=context.schema, revision=revision)
    current = migrations.db_current(context.engine, schema=context.schema)
    click.echo(f"schema {context.schema!r} is at {current}")


@db.command("downgrade")
@click.argument("revision")
@pass_context
@handles_errors
def db_downgrade(context: Context, revision: str) -> None:
    """Revert down to REVISION (an id, -1, or base)."""
    migrations.db_downgrade(context.engine, schema=context.schema, revision=revision)
    current = migrations.db_current(context.engine, schema=context.schema)
    click.echo(f"schema {context.schema!r} is at {current or 'base (nothing installed)'}")


@db.command("current")
@pass_context
@handles_errors
def db_current(context: Context) -> None:
    """Print the revision the schema is at."""
    current = migrations.db_current(context.engine, schema=context.schema)
    head = migrations.head_revision()
    state = "head" if current == head else "behind head " + head if current else "not installed"
    click.echo(f"{current or 'base'} ({state})")


@db.command("check")
@pass_context
@handles_errors
def db_check(context: Context) -> None:
    """Exit non-zero unless the schema is at head and matches the metadata."""
    result = migrations.db_check(context.engine, schema=context.schema)
    if result.ok:
        click.echo(f"schema {context.schema!r} is at {result.head} and matches the metadata")
        return
    if result.current != result.head:
        _fail(
            f"schema {context.schema!r} is at {result.current or 'base'}, head is {result.head}; "
            "run `pgq-sa db upgrade`"
        )
    for difference in result.differences:
        click.echo(f"  {difference}", err=True)
    _fail(f"schema {context.schema!r} differs from the metadata")


@db.command("grant")
@click.option("--worker", "worker_role", metavar="ROLE", help="role the workers log in as")
@click.option("--producer", "producer_role", metavar="ROLE", help="role that enqueues jobs")
@click.option("--print", "print_only", is_flag=True, help="print the SQL instead of running it")
@pass_context
@handles_errors
def db_grant(
    context: Context, worker_role: str | None, producer_role: str | None, print_only: bool
) -> None:
    """Grant a worker role and/or a producer role what they need (run as the schema's owner).

    See docs/security.md: the owner migrates, workers get read/write on the queue's tables,
    producers may only insert, read and cancel jobs.
    """
    from pgq_sa import _roles as roles

    if print_only:
        click.echo(
            roles.grant_script(context.schema, worker=worker_role, producer=producer_role), nl=False
        )
        return
    roles.grant(context.engine, context.schema, worker=worker_role, producer=producer_role)
    named = (("worker", worker_role), ("producer", producer_role))
    granted = " and ".join(f"the {kind} role {role!r}" for kind, role in named if role is not None)
    click.echo(f"schema {context.schema!r}: privileges granted to {granted}")


# --- enqueue and jobs --------------------------------------------------------------------------


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
        _fail(f"no job with id {job_id}")
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
        _fail(f"job {job_id} is not queued or running (or does not exist)")
    click.echo(f"job {job_id} cancelled")


@jobs.command("retry")
@job_id_argument
@pass_context
@handles_errors
def jobs_retry(context: Context, job_id: int) -> None:
    """Queue a failed or cancelled job again."""
    if not context.queue.retry(context.engine, job_id):
        _fail(f"job {job_id} is not failed or cancelled (or its dedupe key is held by a live job)")
    click.echo(f"job {job_id} queued again")


# --- queues ------------------------------------------------------------------------------------


@cli.group()
def queues() -> None:
    """List, pause and resume named queues (cluster-wide)."""


@queues.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_context
@handles_errors
def queues_list(context: Context, as_json: bool) -> None:
    """Queues with live jobs or settings: paused or not, queued and running counts."""
    states = run_sync(context.engine, operations.list_queues(context.queue.statements))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "paused": s.paused,
                        "queued": s.queued,
                        "running": s.running,
                        "paused_at": s.paused_at.isoformat() if s.paused_at else None,
                    }
                    for s in states
                ],
                indent=2,
            )
        )
        return
    click.echo(f"{'queue':<24}{'state':<10}{'queued':>10}{'running':>10}")
    for s in states:
        click.echo(
            f"{s.name:<24}{'paused' if s.paused else 'active':<10}{s.queued:>10}{s.running:>10}"
        )


@queues.command("pause")
@click.argument("name")
@pass_context
@handles_errors
def queues_pause(context: Context, name: str) -> None:
    """Stop workers claiming jobs from queue NAME; running jobs finish."""
    context.queue.pause(context.engine, name)
    click.echo(f"queue {name!r} paused")


@queues.command("resume")
@click.argument("name")
@pass_context
@handles_errors
def queues_resume(context: Context, name: str) -> None:
    """Let workers claim jobs from queue NAME again."""
    context.queue.resume(context.engine, name)
    click.echo(f"queue {name!r} resumed")


# --- schedules ---------------------------------------------------------------------------------

DECLARED_WITHIN = 120.0  # seconds: a schedule no running worker touched for longer is "orphaned"


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List periodic schedules (name, expression, time zone, next and last run, enabled).

    A schedule that no running worker declares any more (removed from the code) stops firing
    and is shown as "not declared"; it is kept, not deleted.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedules_list, as_json=as_json)


@pass_context
@handles_errors
def schedules_list(context: Context, as_json: bool) -> None:
    import datetime as dt

    states = run_sync(context.engine, operations.list_schedules(context.queue.statements))
    now = dt.datetime.now(dt.timezone.utc)

    def status(s: operations.ScheduleState) -> str:
        if (now - s.seen_at).total_seconds() > DECLARED_WITHIN:
            return "not declared"
        return "enabled" if s.enabled else "disabled"

    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "expression": s.expression,
                        "timezone": s.timezone,
                        "enabled": s.enabled,
                        "status": status(s),
                        "missed": s.missed,
                        "next_run": s.next_run.isoformat() if s.next_run and s.enabled else None,
                        "last_run": s.last_run.isoformat() if s.last_run else None,
                        "seen_at": s.seen_at.isoformat(),
                    }
                    for s in states
                ],
                indent=2,
            )
        )
        return
    click.echo(
        f"{'name':<28}{'expression':<20}{'time zone':<18}{'status':<14}{'next run':<27}last run"
    )
    for s in states:
        next_run = s.next_run.isoformat(timespec="seconds") if s.next_run and s.enabled else "-"
        last_run = s.last_run.isoformat(timespec="seconds") if s.last_run else "-"
        click.echo(
            f"{s.name:<28}{s.expression:<20}{s.timezone:<18}{status(s):<14}{next_run:<27}{last_run}"
        )


def _switch_schedule(context: Context, name: str, enabled: bool) -> None:
    from pgq_sa._validation import schedule_name

    schedule_name(name)  # refuse what no schedule can be called before asking the database
    changed = run_sync(
        context.engine, operations.set_schedule_enabled(context.queue.statements, name, enabled)
    )
    if not changed:
        _fail(f"no schedule named {name!r} (see `pgq-sa schedules`)")
    click.echo(f"schedule {name!r} {'enabled' if enabled else 'disabled'}")


@schedules.command("enable")
@click.argument("name")
@pass_context
@handles_errors
def schedules_enable(context: Context, name: str) -> None:
    """Let schedule NAME fire again (from its next fire time)."""
    _switch_schedule(context, name, True)


@schedules.command("disable")
@click.argument("name")
@pass_context
@handles_errors
def schedules_disable(context: Context, name: str) -> None:
    """Stop schedule NAME from firing, cluster-wide."""
    _switch_schedule(context, name, False)


# --- run ---------------------------------------------------------------------------------------


def load_queue(target: str) -> Queue:
    """Import ``module:attribute`` (from the current directory too) and check it is a Queue."""
    import importlib

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(
            "expected MODULE:QUEUE, e.g. myapp.tasks:queue", param_hint="TARGET"
        )
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {error}", param_hint="TARGET"
        ) from None
    except Exception as error:  # the module itself failed: say where, without a traceback
        raise click.BadParameter(
            f"importing {module_name!r} failed: {_where(error)}{type(error).__name__}: {error}",
            param_hint="TARGET",
        ) from None
    value = getattr(module, attribute, None)
    if not isinstance(value, Queue):
        found = "nothing" if value is None else f"a {type(value).__name__}"
        raise click.BadParameter(f"{target} is {found}, not a pgq_sa.Queue", param_hint="TARGET")
    return value


def _where(error: Exception) -> str:
    """``file:line: `` of the innermost frame of ``error`` (or of the bad line of a SyntaxError)."""
    import traceback

    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}: "
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


@cli.command()
@click.argument("target", metavar="MODULE:QUEUE")
@click.option("--threads", type=click.IntRange(1, 10_000), help="ThreadWorker with N threads [8]")
@click.option("--async", "use_async", is_flag=True, help="AsyncWorker instead of threads")
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="event loop for --async",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 100_000), help="AsyncWorker jobs at once [100]"
)
@click.option("--batch-size", type=click.IntRange(1, 10_000), help="jobs claimed per statement")
@click.option("--queues", "queue_names", metavar="A,B", help="only these named queues")
@click.option(
    "--heartbeat-interval", type=click.FloatRange(min=0.01), default=5.0, show_default=True
)
@click.option("--lease-timeout", type=click.FloatRange(min=0.02), default=30.0, show_default=True)
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option("--until-empty", is_flag=True, help="exit once no due job is left")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="serve Prometheus /metrics on this port (extra 'prometheus')",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="address for /metrics")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@pass_context
@handles_errors
def run(
    context: Context,
    target: str,
    threads: int | None,
    use_async: bool,
    backend: str,
    concurrency: int | None,
    batch_size: int | None,
    queue_names: str | None,
    heartbeat_interval: float,
    lease_timeout: float,
    poll_interval: float,
    shutdown_timeout: float,
    until_empty: bool,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
) -> None:
    """Run a worker for the Queue object at MODULE:QUEUE until SIGINT/SIGTERM."""
    import logging

    from pgq_sa._worker import AsyncWorker, ThreadWorker

    if use_async and threads is not None:
        raise click.UsageError("--threads and --async exclude each other")
    if not use_async and concurrency is not None:
        raise click.UsageError("--concurrency goes with --async (use --threads for threads)")
    queue = load_queue(target)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if metrics_port is not None:
        _serve_metrics(context, queue, metrics_host, metrics_port)
    names = [n.strip() for n in queue_names.split(",")] if queue_names else None
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "queues": names,
        "heartbeat_interval": heartbeat_interval,
        "lease_timeout": lease_timeout,
        "poll_interval": poll_interval,
        "shutdown_timeout": shutdown_timeout,
    }
    if use_async:
        import anyio

        worker = AsyncWorker(queue, context.url, concurrency=concurrency or 100, **common)

        async def main() -> None:
            await worker.run(until_empty=until_empty)

        anyio.run(main, backend=backend)
    else:
        ThreadWorker(queue, context.url, threads=threads or 8, **common).run(
            until_empty=until_empty
        )


def _serve_metrics(context: Context, queue: Queue, host: str, port: int) -> None:
    """Count the queue's events and serve them, with the depth gauges, until the process ends."""
    try:
        from pgq_sa.contrib.prometheus import PrometheusMetrics, serve
    except ImportError as error:
        _fail(str(error))
    PrometheusMetrics(queue, context.engine)
    try:
        server = serve(port, host)
    except OSError as error:
        _fail(f"cannot serve metrics on {host}:{port}: {error.strerror or error}")
    click.echo(f"metrics on http://{host}:{server.server_port}/metrics", err=True)


# --- demo --------------------------------------------------------------------------------------


@cli.command()
@click.option("--jobs", "job_count", default=300, show_default=True, type=click.IntRange(1, 10**5))
@click.option(
    "--demo-schema",
    default="pgq_demo",
    show_default=True,
    help="schema the demo (re)creates for itself",
)
@pass_context
@handles_errors
def demo(context: Context, job_count: int, demo_schema: str) -> None:
    """Show the queue working (on the embedded PostgreSQL when nothing is configured)."""
    from pgq_sa._cli.demo import run_demo
    from pgq_sa._schema import validate_schema_name

    run_demo(context.engine, validate_schema_name(demo_schema), job_count)


# The monitoring commands (status, jobs list, workers, dashboard) register themselves on the
# groups above when their module is imported.
from pgq_sa._cli import monitor  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    main()
