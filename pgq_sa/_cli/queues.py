"""``pgq-sa queues list|pause|resume``."""

from __future__ import annotations

import json

import click

from pgq_sa._cli.app import Context, cli, handles_errors, pass_context
from pgq_sa._ops import producer as operations
from pgq_sa._ops.drive import run_sync


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
