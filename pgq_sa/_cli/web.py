"""``pgq-sa web``: serve the dashboard of the configured database and schema.

It listens on loopback by default; on any other address it refuses to start without
authentication (``PGQ_SA_WEB_TOKEN``, or ``PGQ_SA_WEB_USER`` and ``PGQ_SA_WEB_PASSWORD``) unless
``--insecure-no-auth`` says otherwise, loudly.
"""

from __future__ import annotations

import contextlib

import click

from pgq_sa._cli.app import Context, cli, fail, handles_errors, pass_context
from pgq_sa._errors import SchemaMissing

INSECURE_WARNING = (
    "WARNING: serving the dashboard on {host} WITHOUT AUTHENTICATION (--insecure-no-auth): "
    "anyone who can reach this address can read every payload and error, and cancel, retry "
    "and pause jobs{suffix}."
)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
@click.option("--read-only", is_flag=True, help="show everything, refuse every action")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="allow a non-loopback address without authentication (not recommended)",
)
@pass_context
@handles_errors
def web(context: Context, host: str, port: int, read_only: bool, insecure_no_auth: bool) -> None:
    """Serve the web dashboard (the 'web' extra): overview, queues, tasks, jobs, failures,
    workers, schedules and workflows, live.

    Authentication comes from the environment: PGQ_SA_WEB_TOKEN (a bearer token, with a login
    form for browsers), or PGQ_SA_WEB_USER and PGQ_SA_WEB_PASSWORD (HTTP Basic).
    """
    try:
        from pgq_sa.web import _auth as auth
        from pgq_sa.web import _server as server
        from pgq_sa.web._app import create_app
    except ImportError as error:
        fail(
            f"the dashboard needs the 'web' extra ({error.name} is missing): "
            "pip install 'pgq-sa[web]'"
        )
        return
    from pgq_sa import _dashboard as dashboard
    from pgq_sa._ops.drive import run_sync

    credentials = auth.from_environment()
    if not server.is_loopback(host) and not credentials.required:
        if not insecure_no_auth:
            fail(
                f"refusing to serve the dashboard on {host} without authentication: set "
                f"{auth.TOKEN_VARIABLE} (or {auth.USER_VARIABLE} and {auth.PASSWORD_VARIABLE}), "
                "listen on 127.0.0.1, or pass --insecure-no-auth"
            )
        suffix = "" if not read_only else " (read-only: it can still read them)"
        click.secho(
            INSECURE_WARNING.format(host=host, suffix=suffix), fg="red", bold=True, err=True
        )
    queue = context.queue
    try:
        access = run_sync(context.engine, dashboard.access(queue.statements))
    except SchemaMissing as error:
        fail(str(error))
        return
    app = create_app(context.engine, schema=context.schema, read_only=read_only, auth=credentials)
    mode = (
        "read-only"
        if read_only
        else ("read-only (the role may not write)" if not access.writes else "read-write")
    )
    click.echo(
        f"pgq-sa dashboard for schema {context.schema!r} at {server.url_of(host, port)} "
        f"({credentials.describe()}, {mode}); Ctrl-C stops it"
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.serve(app, host, port)
    click.echo("dashboard stopped")
