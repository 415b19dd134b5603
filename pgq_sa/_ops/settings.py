"""The durability level of a queue schema, as operations: read it (the workers do at start), set
it (the command line and the migration doors), and see which tables are UNLOGGED.

``durable`` (the default) commits every write to the WAL and waits for it; ``balanced`` lets the
workers' claims and heartbeats commit without waiting for the WAL flush (a crash may forget a
claim, so that job runs again: at-least-once already allows it), while enqueues and finishes stay
durable; ``volatile`` keeps the queue's tables UNLOGGED: fastest, but a server crash empties them,
and they are not replicated, so it is refused while a physical replica is attached unless forced.
"""

from __future__ import annotations

from typing import Literal

from pgq_sa._errors import ConfigurationError
from pgq_sa._ops.drive import Operation
from pgq_sa._sql import Statements
from pgq_sa._sql.settings import VOLATILE_TABLES, set_persistence

Durability = Literal["durable", "balanced", "volatile"]
LEVELS: tuple[Durability, ...] = ("durable", "balanced", "volatile")
DEFAULT: Durability = "durable"
SETTING = "durability"


def durability_level(value: object) -> Durability:
    """``value`` if it names a level, else a ValueError listing them (before any SQL)."""
    for level in LEVELS:
        if value == level:
            return level
    raise ValueError(f"durability must be one of {', '.join(LEVELS)}; got {value!r}")


def read_durability(statements: Statements) -> Operation[Durability]:
    """The schema's durability level (``durable`` when never set)."""
    rows = yield statements.read_setting, {"name": SETTING}
    if not rows:
        return DEFAULT
    try:
        return durability_level(rows[0][0])
    except ValueError:
        return DEFAULT  # written by a newer pgq_sa: the safest reading


def table_persistence(statements: Statements) -> Operation[dict[str, str]]:
    """Each table of the schema: ``"logged"`` or ``"unlogged"``."""
    rows = yield statements.table_persistence, None
    pairs = (tuple(row) for row in rows)
    return {str(name): "unlogged" if kind == "u" else "logged" for name, kind in pairs}


def set_durability(
    statements: Statements, level: Durability, *, force: bool = False
) -> Operation[None]:
    """Store ``level`` and make the tables match it (UNLOGGED for ``volatile``, else logged).
    Run it in one transaction: a refusal or a failure leaves everything as it was."""
    if level == "volatile" and not force:
        ((replicas,),) = yield statements.physical_replicas, None
        if replicas:
            raise ConfigurationError(
                f"refusing to make schema {statements.tables.schema!r} volatile: this server "
                f"streams to {replicas} physical replica(s), which never receive UNLOGGED tables "
                "(a failover would lose the queue); use --force (force=True) to do it anyway"
            )
    for table in VOLATILE_TABLES:
        yield set_persistence(statements.tables, table, logged=level != "volatile"), None
    yield statements.write_setting, {"name": SETTING, "value": level}
