"""The ``pgq-sa`` command group and what every command shares: where the database is, which schema,
and turning user mistakes into one-line messages.

Environment variables: PGQ_SA_DATABASE_URL (else DATABASE_URL, else the embedded PostgreSQL) and
PGQ_SA_SCHEMA (else ``pgq``). User mistakes end with a one-line message and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from pgq_sa._config import make_engine, resolve_url, schema_from_environment
from pgq_sa._errors import PgqError, explain
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


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@contextmanager
def _user_errors(context: Context | None = None) -> Iterator[None]:
    """Turn the errors a user can cause into a message and an exit code."""
    schema = context.schema if context is not None else None
    url = context._url if context is not None else None
    try:
        yield
    except PgqError as error:  # configuration, migrations, a database or schema missing
        fail(str(error))
    except (ValueError, TypeError) as error:
        fail(str(error), EXIT_USAGE)
    except (DBAPIError, OSError) as error:
        explained = explain(error, schema=schema, url=url)
        if explained is not None:
            fail(str(explained))
        if isinstance(error, OSError):
            raise
        detail = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        if isinstance(error, OperationalError):
            fail(f"cannot reach the database: {detail}")
        fail(f"the database refused: {detail}")


def handles_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = [arg for arg in args if isinstance(arg, Context)]
        with _user_errors(found[0] if found else None):
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
