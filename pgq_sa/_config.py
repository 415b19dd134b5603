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

# The connection parameters libpq (so psycopg, and the workers' LISTEN connection) understands in
# a URL's query: every other option there belongs to some driver and must not reach libpq, which
# refuses unknown ones ("invalid URI query parameter"). ``host``/``port`` are handled apart.
LIBPQ_OPTIONS = frozenset(
    {
        "application_name", "fallback_application_name", "client_encoding", "options",
        "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "sslmode", "sslnegotiation", "sslcompression",
        "sslcert", "sslkey", "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir",
        "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version", "requiressl",
        "require_auth", "channel_binding", "gssencmode", "gsslib", "gssdelegation", "krbsrvname",
        "requirepeer", "passfile", "service", "target_session_attrs", "load_balance_hosts",
        "hostaddr",
    }
)  # fmt: skip
# asyncpg's ``ssl=`` as libpq's ``sslmode=`` (asyncpg also takes the libpq names themselves).
_SSL_AS_SSLMODE = {"true": "require", "false": "disable", "on": "require", "off": "disable"}
# libpq options asyncpg takes under the same name; the others it would refuse as keywords.
_ASYNCPG_TAKES = frozenset({"passfile", "target_session_attrs", "krbsrvname", "gsslib"})


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


def libpq_options(url: URL) -> dict[str, str]:
    """The options of ``url``'s query that libpq understands (the last value of a repeated one),
    with asyncpg's ``ssl=`` as ``sslmode=``; every other driver option is left out."""
    options: dict[str, str] = {}
    for name, value in url.query.items():
        last = value[-1] if isinstance(value, tuple) else value
        if name in LIBPQ_OPTIONS:
            options[name] = last
        elif name == "ssl" and "sslmode" not in url.query:
            options["sslmode"] = _SSL_AS_SSLMODE.get(last.lower(), last)
    return options


def _hosts(url: URL) -> dict[str, str]:
    """``host`` and ``port`` for libpq: the URL's, or its ``?host=h1:5432&host=h2`` list."""
    if url.host or "host" not in url.query:
        found = {"host": url.host or ""} if url.host else {}
        return found | ({"port": str(url.port)} if url.port else {})
    given = url.query["host"]
    entries = list(given) if isinstance(given, tuple) else [given]
    hosts, ports = [], []
    for entry in entries:
        host, colon, port = entry.rpartition(":") if not entry.startswith("/") else ("", "", "")
        hosts.append(host if colon else entry)
        ports.append(port if colon else str(url.port or ""))
    found = {"host": ",".join(hosts)}
    return found | ({"port": ",".join(ports)} if any(ports) else {})


def libpq_conninfo(value: str | URL) -> dict[str, str]:
    """The libpq connection parameters of ``value`` (any SQLAlchemy PostgreSQL URL): the
    address and credentials, and only the query options libpq understands."""
    url = parse_url(value)
    params = _hosts(url) | libpq_options(url)
    for name, part in (("user", url.username), ("password", url.password)):
        if part:
            params[name] = str(part)
    if url.database:
        params["dbname"] = url.database
    return params


def sync_url(value: str | URL) -> URL:
    """The URL with a sync driver pgq_sa supports (psycopg 3). A URL written for another driver
    keeps only the query options libpq understands (asyncpg's ``ssl=`` becomes ``sslmode=``)."""
    url = parse_url(value)
    if "+" in url.drivername and url.get_driver_name() in _SYNC_DRIVERS:
        return url
    kept: dict[str, str | tuple[str, ...]] = dict(libpq_options(url))
    if "host" in url.query:
        kept["host"] = url.query["host"]  # a socket folder, or SQLAlchemy's list of hosts
    return url.set(drivername="postgresql+psycopg", query=kept)


def async_url(value: str | URL) -> URL:
    """The URL with an async driver: asyncpg unless psycopg was asked for explicitly. For asyncpg,
    libpq's ``sslmode`` becomes ``ssl``, and libpq options asyncpg does not take are left out
    (``application_name`` and ``connect_timeout`` travel through :func:`asyncpg_connect_args`)."""
    url = parse_url(value)
    if "+" in url.drivername and url.get_driver_name() in _ASYNC_DRIVERS:
        driver = url.get_driver_name()
    else:
        driver = "asyncpg"
    url = url.set(drivername=f"postgresql+{driver}")
    if driver != "asyncpg":
        return url
    if "sslmode" in url.query:
        given = url.query["sslmode"]
        mode = given if isinstance(given, str) else given[-1]
        url = url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
    return url.difference_update_query(LIBPQ_OPTIONS - _ASYNCPG_TAKES)


def asyncpg_connect_args(value: str | URL) -> dict[str, Any]:
    """What asyncpg takes as ``connect()`` arguments for the libpq options of ``value`` it does
    not take by name: ``application_name`` as a ``server_settings`` entry,
    ``connect_timeout`` as ``timeout``."""
    options = libpq_options(parse_url(value))
    args: dict[str, Any] = {}
    if "application_name" in options:
        args["server_settings"] = {"application_name": options["application_name"]}
    if "connect_timeout" in options:
        args["timeout"] = float(options["connect_timeout"])
    return args


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
    target = async_url(url)
    if target.get_driver_name() == "asyncpg":
        extra = asyncpg_connect_args(url)
        if extra:
            options["connect_args"] = extra | dict(options.get("connect_args") or {})
    return create_async_engine(target, **options)
