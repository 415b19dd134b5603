"""Where the database is: URL precedence, driver choice for sync and async, engine creation,
and the connection settings that bound how long a silent network can hold a connection.

Precedence: an explicit URL, then ``PGQ_SA_DATABASE_URL``, then ``DATABASE_URL``, then the
embedded PostgreSQL (extra ``embedded``). ``postgres://`` and driverless ``postgresql://`` URLs
get psycopg for sync engines and asyncpg for async ones; an explicit ``+psycopg`` stays psycopg.

Engines made here detect a dead peer in bounded time (:class:`NetworkSettings`): TCP keepalives,
``tcp_user_timeout`` and a connect timeout, for libpq (psycopg, the LISTEN connection) as
connection parameters and for asyncpg as a connect timeout plus socket options. What the URL (or
the caller's ``connect_args``) says wins over these defaults.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event
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


@dataclass(frozen=True)
class NetworkSettings:
    """How soon a connection gives up on a peer that went silent (a pulled cable, a NAT or
    firewall that forgot the connection: no FIN, no RST, just no answer). Without them a read on
    such a socket waits for ever (Linux retransmits unacknowledged data for ~15 minutes and never
    probes an idle connection before 2 hours).

    * ``keepalive_idle``, ``keepalive_interval``, ``keepalive_count`` (whole seconds, counts):
      an idle connection sends its first probe after ``keepalive_idle`` seconds of silence, then
      one every ``keepalive_interval``; it is dead after ``keepalive_count`` unanswered probes.
      A connection waiting for a notification or an answer is idle in this sense.
    * ``tcp_user_timeout`` (seconds; Linux, libpq 12+): how long sent data may stay
      unacknowledged before the connection is dead. Keepalives are not sent while data is in
      flight, so this is what bounds a statement sent into a blackhole; Linux also ends keepalive
      probing by it once a probe went unanswered, hence the default equals
      ``keepalive_idle + keepalive_interval * keepalive_count``.
    * ``connect_timeout`` (whole seconds, libpq treats less than 2 as 2): a new connection,
      TCP handshake and startup, must be ready within it.

    A statement whose answer never comes is bounded by the workers' own client-side deadline
    (their ``statement_timeout``), not here: these settings are the connections'.

    The defaults detect a dead peer within :attr:`dead_peer_within` = 10 seconds.
    """

    keepalive_idle: int = 4
    keepalive_interval: int = 2
    keepalive_count: int = 3
    tcp_user_timeout: float = 10.0
    connect_timeout: int = 5

    def __post_init__(self) -> None:
        from pgq_sa import _validation as validation

        for name in ("keepalive_idle", "keepalive_interval", "keepalive_count", "connect_timeout"):
            value = validation._integer(getattr(self, name), name)
            if value < 1:
                raise ValueError(
                    f"{name} must be 1 or more (whole seconds or a count), got {value}"
                )
        validation.seconds(self.tcp_user_timeout, "tcp_user_timeout", allow_zero=False)

    @property
    def dead_peer_within(self) -> float:
        """Seconds after which a connection to a silent peer has failed, idle or not."""
        probing = self.keepalive_idle + self.keepalive_interval * self.keepalive_count
        return float(max(probing, self.tcp_user_timeout))

    def libpq_parameters(self) -> dict[str, str]:
        """The libpq connection parameters (psycopg's ``connect()`` keywords)."""
        parameters = {
            "keepalives": "1",
            "keepalives_idle": str(self.keepalive_idle),
            "keepalives_interval": str(self.keepalive_interval),
            "keepalives_count": str(self.keepalive_count),
            "connect_timeout": str(self.connect_timeout),
        }
        if psycopg.pq.version() >= 120000:  # older libpq refuses the parameter
            parameters["tcp_user_timeout"] = str(round(self.tcp_user_timeout * 1000))
        return parameters

    def set_socket_options(self, sock: Any) -> None:
        """Keepalives and the user timeout on a connected TCP socket (asyncpg's, which has no
        parameters for them); options this platform lacks are left out."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", self.keepalive_idle),
            ("TCP_KEEPALIVE", self.keepalive_idle),  # macOS's name for the idle time
            ("TCP_KEEPINTVL", self.keepalive_interval),
            ("TCP_KEEPCNT", self.keepalive_count),
            ("TCP_USER_TIMEOUT", round(self.tcp_user_timeout * 1000)),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


DEFAULT_NETWORK = NetworkSettings()


def libpq_defaults(given: Mapping[str, object], network: NetworkSettings) -> dict[str, str]:
    """The parameters of ``network`` that ``given`` (a URL's query, a conninfo's or the
    caller's connect arguments) does not set itself; ``PGCONNECT_TIMEOUT`` counts as set."""
    present = set(given) | ({"connect_timeout"} if os.environ.get("PGCONNECT_TIMEOUT") else set())
    return {k: v for k, v in network.libpq_parameters().items() if k not in present}


def _merged_connect_args(defaults: Mapping[str, Any], options: dict[str, Any]) -> None:
    """Put ``defaults`` under the caller's own ``connect_args`` in ``options``."""
    given = dict(options.get("connect_args") or {})
    options["connect_args"] = {**{k: v for k, v in defaults.items() if k not in given}, **given}


def make_engine(
    url: str | URL, *, network: NetworkSettings | None = DEFAULT_NETWORK, **options: Any
) -> Engine:
    """A sync engine (psycopg) for ``url``; its connections use ``network`` (None: libpq's
    defaults) where neither the URL nor ``connect_args`` say otherwise."""
    target = sync_url(url)
    if network is not None:
        _merged_connect_args(libpq_defaults(target.query, network), options)
    return create_engine(target, **options)


def make_async_engine(
    url: str | URL, *, network: NetworkSettings | None = DEFAULT_NETWORK, **options: Any
) -> AsyncEngine:
    """An asyncio engine (asyncpg by default) for ``url``, its connections using ``network``
    (None: the driver's defaults) where neither the URL nor ``connect_args`` say otherwise."""
    target = async_url(url)
    asyncpg = target.get_driver_name() == "asyncpg"
    defaults: dict[str, Any] = {}
    if network is not None and not asyncpg:
        defaults = dict(libpq_defaults(target.query, network))
    elif network is not None and not {"timeout", "connect_timeout"} & set(target.query):
        defaults["timeout"] = float(network.connect_timeout)
    if asyncpg:
        defaults |= asyncpg_connect_args(url)  # what the URL itself says wins over the network
    if defaults:
        _merged_connect_args(defaults, options)
    engine = create_async_engine(target, **options)
    if asyncpg and network is not None:
        event.listen(engine.sync_engine, "connect", _asyncpg_keepalives(network))
    return engine


def _asyncpg_keepalives(network: NetworkSettings) -> Any:
    """A pool ``connect`` hook setting ``network``'s socket options on each new asyncpg
    connection. asyncpg has no parameters for them and no public accessor for its socket: its
    transport (``Connection._transport``) is the one its maintainers point to (asyncpg#606)."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        transport = getattr(dbapi_connection.driver_connection, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            network.set_socket_options(sock)

    return on_connect
