"""``pgq-sa run MODULE:QUEUE``: a ThreadWorker or an AsyncWorker from the shell, with metrics."""

from __future__ import annotations

import sys
from typing import Any

import click

from pgq_sa._cli.app import Context, cli, fail, handles_errors, pass_context
from pgq_sa._queue import Queue


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
@click.option(
    "--statement-timeout",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="seconds a worker statement may wait for an answer before its connection is replaced",
)
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
    statement_timeout: float,
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
        "statement_timeout": statement_timeout,
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
        fail(str(error))
    PrometheusMetrics(queue, context.engine)
    try:
        server = serve(port, host)
    except OSError as error:
        fail(f"cannot serve metrics on {host}:{port}: {error.strerror or error}")
    click.echo(f"metrics on http://{host}:{server.server_port}/metrics", err=True)
