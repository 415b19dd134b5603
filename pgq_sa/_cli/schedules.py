"""``pgq-sa schedules [enable|disable NAME]``."""

from __future__ import annotations

import json

import click

from pgq_sa._cli.app import Context, cli, fail, handles_errors, pass_context
from pgq_sa._ops import producer as operations
from pgq_sa._ops.drive import run_sync

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
        fail(f"no schedule named {name!r} (see `pgq-sa schedules`)")
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
