"""The exceptions pgq_sa raises about its setting, and the one function that explains a driver's.

A raw ``ProgrammingError`` carrying two kilobytes of SQL tells a user nothing they can act on.
Every door (the ``Queue`` API, the command line, the workers) passes what the database driver
raised through :func:`explain`, which recognises the handful of setting problems a user can fix
(no such database, nothing listening, the queue's tables not installed, or installed by an older
pgq_sa) and returns a pgq_sa exception whose message names the fix, without the SQL; the
driver's exception stays reachable as ``__cause__``. Anything else is left alone.

Recognised by SQLSTATE where the driver gives one (psycopg, psycopg2, asyncpg, pg8000 each keep it
somewhere else), else by PostgreSQL's message (errors raised while connecting carry no SQLSTATE
in libpq-based drivers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

# Errors a driver may raise without SQLAlchemy wrapping them (asyncpg's, on SQLAlchemy 2.0).
DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)

__all__ = [
    "ConfigurationError",
    "DatabaseMissing",
    "DatabaseUnreachable",
    "DedupeConflict",
    "JobCancelled",
    "JobTimeout",
    "MigrationError",
    "PgqError",
    "SchemaMissing",
    "SchemaOutdated",
    "StatementDeadline",
    "TransactionEnded",
    "UpstreamFailed",
    "WorkerLost",
    "explain",
    "explained",
]


class PgqError(Exception):
    """Base class of the errors pgq_sa raises about its setting (not about a job)."""


class ConfigurationError(PgqError, RuntimeError):
    """The setting is wrong in a way only the user can fix (the message says how)."""


class DatabaseMissing(ConfigurationError):
    """The URL names a database that does not exist on the server."""


class SchemaMissing(ConfigurationError):
    """The queue's tables are not installed in the database (``pgq-sa db upgrade``)."""


class SchemaOutdated(ConfigurationError):
    """The queue's tables were installed by an older pgq_sa (``pgq-sa db upgrade``)."""


class DatabaseUnreachable(PgqError):
    """No PostgreSQL answered at the URL's address: a wrong host or port, or a server that is
    down. Not a :class:`ConfigurationError`: a server that restarts is unreachable for a while."""


# --- what a job's stored error names (its ``error.type`` is ``pgq_sa.<Name>``) -----------------


class JobTimeout(Exception):
    """The handler ran past its task's ``timeout``."""


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class WorkerLost(Exception):
    """The worker holding the job stopped heartbeating."""


class TransactionEnded(RuntimeError):
    """The handler committed or rolled back ``job.connection`` itself."""


class UpstreamFailed(Exception):
    """Stored as the error of a workflow step cancelled because a step it waits for (directly or
    through other steps) failed for good or was cancelled; ``error.type`` is
    ``"pgq_sa.UpstreamFailed"``. Never raised: it names what happened."""


class DedupeConflict(Exception):
    """A step's ``dedupe_key`` is held by an unfinished job that is not a step of a workflow
    (``enqueue_workflow``), or by another job when a retry would revive the step
    (``retry_workflow``). Nothing was written."""

    def __init__(self, message: str, *, key: str, holder: int) -> None:
        super().__init__(message)
        self.key = key
        self.holder = holder


class MigrationError(PgqError, RuntimeError):
    """The database's queue schema is in a state these migrations cannot move from."""


class StatementDeadline(TimeoutError):
    """No answer from the database within the worker's statement deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"no answer from the database within {seconds:g}s (statement_timeout): the "
            "connection was cut and will be replaced"
        )


_UPGRADE = (
    "run `pgq-sa db upgrade` (or `alembic upgrade heads` if the queue comes through your own "
    "Alembic)"
)
_DATABASE_MISSING = re.compile(r'database "(?P<name>[^"]+)" does not exist')
_RELATION_MISSING = re.compile(r'relation "(?:(?P<schema>[^".]+)\.)?(?P<table>[^".]+)" does not')
_SCHEMA_MISSING = re.compile(r'schema "(?P<schema>[^"]+)" does not exist')
_COLUMN_MISSING = re.compile(r'column (?:"?[\w.]+"?\.)?"?(?P<column>\w+)"? (?:of relation )?')
_ENUM_VALUE = re.compile(r"invalid input value for enum (?P<enum>[\w.\"]+)")
_UNREACHABLE = (
    "connection refused",
    "can't create a connection",
    "could not connect",
    "connect call failed",
    "could not translate host name",
    "name or service not known",
    "no such file or directory",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "network is unreachable",
    "no route to host",
    "the database system is starting up",
    "the database system is shutting down",
)
# Relations added by a later migration step than the first: missing one of these (and not the
# others) means the queue is installed, by an older pgq_sa. Add a step's new tables here.
_LATER_RELATIONS = frozenset({"workflows", "workflows_id_seq", "job_dependencies", "settings"})


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of ``error`` or of its causes, wherever the driver keeps it."""
    for current in _causes(error):
        for attribute in ("sqlstate", "pgcode"):  # psycopg and asyncpg; psycopg2
            value = getattr(current, attribute, None)
            if isinstance(value, str) and len(value) == 5:
                return value
        first = current.args[0] if current.args else None
        if isinstance(first, dict) and isinstance(first.get("C"), str):  # pg8000
            return str(first["C"])
    return None


def _message(error: BaseException) -> str:
    """The driver's own first line: no SQL, no parameters, no SQLAlchemy background link."""
    original = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    first = original.args[0] if original.args else original
    if isinstance(first, dict):  # pg8000: {"S": "ERROR", "C": "42P01", "M": "relation ..."}
        return str(first.get("M", first))
    text = str(first).strip() or type(original).__name__
    text = re.sub(r"^<class '[\w.]+'>: ", "", text)  # SQLAlchemy's asyncpg adapter prefix
    return text.splitlines()[0].strip()


def _where(url: URL | None) -> str:
    if url is None:
        return ""
    host = url.host or url.query.get("host") or "the local socket"
    port = f":{url.port}" if url.port else ""
    return f" at {host}{port}"


def _is_connection_error(error: BaseException, state: str | None, text: str) -> bool:
    if state is not None:
        return state.startswith("08") or state in {"57P03", "57P01"}
    if any(isinstance(cause, OSError) for cause in _causes(error)):  # refused, no such host...
        return True  # (asyncpg raises them from connect() unwrapped, pg8000 as their cause)
    lowered = text.lower()
    return any(phrase in lowered for phrase in _UNREACHABLE)


def explain(
    error: BaseException, *, schema: str | None = None, url: URL | None = None
) -> PgqError | None:
    """The pgq_sa exception that explains ``error`` (with the fix), or None if it is not one
    of the setting problems pgq_sa recognises. ``schema`` is the queue's schema (messages about
    other schemas are not ours), ``url`` where the caller tried to connect (for the message)."""
    if isinstance(error, PgqError):
        return error
    if isinstance(error, TimeoutError):
        return None  # an OSError, but one of pgq_sa's own (Queue.wait)
    state = _sqlstate(error)
    if not isinstance(error, (DBAPIError, OSError)) and state is None:
        return None  # not from the database (a driver's own error carries a SQLSTATE: asyncpg's
        # connect errors reach the caller unwrapped on SQLAlchemy 2.0)
    text = _message(error)
    missing_database = _DATABASE_MISSING.search(text)
    if state == "3D000" or (state is None and missing_database):
        found = missing_database
        name = found.group("name") if found else (url.database if url else None) or "?"
        return DatabaseMissing(
            f'database "{name}" does not exist{_where(url)}: create it (`createdb {name}`, or '
            "CREATE DATABASE) or fix the database name in the URL"
        )
    if state in {"28P01", "28000"}:
        return ConfigurationError(
            f"PostgreSQL{_where(url)} refused the login ({text}): fix the user or password in "
            "the URL, or the server's pg_hba.conf"
        )
    if state in {"3F000", "42P01"}:
        return _missing_object(text, schema)
    if state in {"42703", "22P02"}:
        return _outdated_object(text, schema)
    if _is_connection_error(error, state, text):
        return DatabaseUnreachable(
            f"cannot reach the database{_where(url)} ({text}): is the server running, and "
            "are the host and port in the URL right?"
        )
    return None


def _ours(schema_named: str | None, schema: str | None) -> bool:
    return schema is None or schema_named is None or schema_named == schema


def _missing_object(text: str, schema: str | None) -> PgqError | None:
    relation = _RELATION_MISSING.search(text)
    named = _SCHEMA_MISSING.search(text)
    where = named.group("schema") if named else relation.group("schema") if relation else None
    if not _ours(where, schema) or (relation is None and named is None):
        return None
    queue_schema = schema or where or "pgq"
    if relation is not None and relation.group("table") in _LATER_RELATIONS:
        return SchemaOutdated(
            f'schema "{queue_schema}" was installed by an older pgq_sa (its table '
            f"{relation.group('table')!r} is missing): {_UPGRADE}"
        )
    return SchemaMissing(
        f'the queue is not installed in schema "{queue_schema}" of this database: {_UPGRADE}'
    )


def _outdated_object(text: str, schema: str | None) -> PgqError | None:
    enum = _ENUM_VALUE.search(text)
    column = _COLUMN_MISSING.search(text) if text.startswith("column") else None
    if enum is None and column is None:
        return None
    if enum is not None:
        enum_schema = enum.group("enum").replace('"', "").rpartition(".")[0] or None
        if not _ours(enum_schema, schema) or not enum.group("enum").endswith("job_state"):
            return None
        what = "a job state"
    else:  # only pgq_sa's own statements run where this is used: the column is ours
        assert column is not None
        what = f"the column {column.group('column')!r}"
    return SchemaOutdated(
        f'schema "{schema or "pgq"}" was installed by an older pgq_sa ({what} is missing): '
        f"{_UPGRADE}"
    )


@contextmanager
def explained(*, schema: str | None = None, url: URL | None = None) -> Iterator[None]:
    """Re-raise what :func:`explain` recognises as its pgq_sa exception (from the original)."""
    try:
        yield
    except Exception as error:
        better = explain(error, schema=schema, url=url)
        if better is None:
            raise
        raise better from error
