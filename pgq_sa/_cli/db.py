"""``pgq-sa db``: migrations (upgrade, downgrade, current, check) and role grants."""

from __future__ import annotations

import click

from pgq_sa import migrations
from pgq_sa._cli.app import Context, cli, fail, handles_errors, pass_context


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
        fail(
            f"schema {context.schema!r} is at {result.current or 'base'}, head is {result.head}; "
            "run `pgq-sa db upgrade`"
        )
    for difference in result.differences:
        click.echo(f"  {difference}", err=True)
    fail(f"schema {context.schema!r} differs from the metadata")


@db.command("durability")
@click.argument("level", required=False, type=click.Choice(["durable", "balanced", "volatile"]))
@click.option("--force", is_flag=True, help="make it volatile even with a physical replica")
@pass_context
@handles_errors
def db_durability(context: Context, level: str | None, force: bool) -> None:
    """Show the durability level, or set it to LEVEL.

    durable (default): every commit waits for the WAL flush. balanced: workers' claims and
    heartbeats do not wait (after a server crash a claimed job may run again); enqueues and
    finishes stay durable. volatile: UNLOGGED tables, fastest, emptied by a server crash and not
    replicated (refused while a physical replica is attached, unless --force). Workers read the
    level when they start: restart them after a change.
    """
    if level is not None:
        migrations.set_durability(context.engine, level, schema=context.schema, force=force)
    current = migrations.read_durability(context.engine, schema=context.schema)
    click.echo(f"schema {context.schema!r}: durability {current}")


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
