"""Where the database is: URL precedence, driver choice for sync and async, engine creation.

Precedence: an explicit URL, then ``PGQ_SA_DATABASE_URL``, then ``DATABASE_URL``, then the
embedded PostgreSQL (extra ``embedded``). ``postgres://`` and driverless ``postgresql://`` URLs
get psycopg for sync engines and asyncpg for async ones; an explicit ``+psycopg`` stays psycopg.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pgq_sa._errors import ConfigurationError as ConfigurationError  # its former home

URL_VARIABLES = ("PGQ_SA_DATABASE_URL", "DATABASE_URL")
SCHEMA_VARIABLE = "PGQ_SA_SCHEMA"

_SYNC_DRIVERS = {"psycopg"}
_ASYNC_DRIVERS = {"asyncpg", "psycopg"}


@dataclass(frozen=True)
class DatabaseURL:
    """A resolved URL and where it came from (an argument, a variable, or ``embedded``)."""

    url: URL
    source: str

    def describe(self) -> str:
        return f"{self.url.render_as_string(hide_password=True)} (from {self.source})"


def parse_url(value: str | URL) -> URL:
    """Parse a PostgreSQL URL, accepting ``postgres://``; refuse other databases clearly."""
    if isinstance(value, URL):
        url = value
    else:
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError("the database URL is empty")
        text = value.strip()
        if text.startswith("postgres://"):
            text = "postgresql://" + text[len("postgres://") :]
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
            raise ConfigurationError(
                f"{value!r} is not a database URL; expected postgresql://user@host:5432/dbname"
            ) from None
    backend = url.get_backend_name()
    if backend == "postgres":
        url = url.set(
            drivername="postgresql" + ("+" + url.get_driver_name() if "+" in url.drivername else "")
        )
        backend = "postgresql"
    if backend != "postgresql":
        raise ConfigurationError(f"pgq_sa needs PostgreSQL, but the URL is for {backend!r}")
    return url


def sync_url(value: str | URL) -> URL:
    """The URL with a sync driver pgq_sa supports (psycopg 3)."""
    url = parse_url(value)
    if "+" in url.drivername and url.get_driver_name() in _SYNC_DRIVERS:
        return url
    return url.set(drivername="postgresql+psycopg")


def async_url(value: str | URL) -> URL:
    """The URL with an async driver: asyncpg unless psycopg was asked for explicitly."""
    url = parse_url(value)
    if "+" in url.drivername and url.get_driver_name() in _ASYNC_DRIVERS:
        driver = url.get_driver_name()
    else:
        driver = "asyncpg"
    url = url.set(drivername=f"postgresql+{driver}")
    if driver == "asyncpg" and "sslmode" in url.query:
        mode = url.query["sslmode"]
        url = url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
    return url


def resolve_url(explicit: str | URL | None = None, *, allow_embedded: bool = True) -> DatabaseURL:
    """Find the database: explicit, then the environment, then the embedded server."""
    if explicit is not None:
        return DatabaseURL(parse_url(explicit), "argument")
    for variable in URL_VARIABLES:
        value = os.environ.get(variable)
        if value:
            try:
                return DatabaseURL(parse_url(value), variable)
            except ConfigurationError as error:
                raise ConfigurationError(f"{variable}: {error}") from None
    if allow_embedded:
        from pgq_sa import _devdb as devdb

        server = devdb.start()
        return DatabaseURL(parse_url(server.url), f"embedded PostgreSQL in {server.data_dir}")
    raise ConfigurationError(
        "no database configured: set PGQ_SA_DATABASE_URL or DATABASE_URL, or pass --database-url"
    )


def schema_from_environment(explicit: str | None = None) -> str:
    if explicit is not None:  # an explicit empty name is refused later, not replaced
        return explicit
    return os.environ.get(SCHEMA_VARIABLE) or "pgq"


def make_engine(url: str | URL, **options: Any) -> Engine:
    """A sync engine (psycopg) for ``url``."""
    return create_engine(sync_url(url), **options)


def make_async_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An asyncio engine (asyncpg by default) for ``url``."""
    return create_async_engine(async_url(url), **options)
