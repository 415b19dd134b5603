"""What the worker core asks its driver to do: the effects its services yield, and the signals.

The services of :mod:`.services` are generators. Each ``yield`` hands the driver one effect and
suspends until the driver has carried it out: :class:`Call` runs one database operation (its
result is sent back, a database error is thrown in), :class:`Wait` waits for a :class:`Signal`
or a timeout, the ``Listen*`` effects drive the LISTEN connection, and :class:`Shutdown` effects
are the few shutdown steps whose waiting differs between threads and an event loop. The thread
driver carries effects out by blocking its thread, the anyio driver by awaiting; the decisions
stay in the generators (psycopg's split of "what to send" from "how to wait").
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from pgq_sa._ops.drive import Operation

T = TypeVar("T")


class Signal(enum.Enum):
    """Level-triggered events: set until cleared; a :class:`Wait` returns at once while set."""

    WAKE = "wake"  # the leading fetcher should claim (NOTIFY, timer, a write, a retry due)
    BACKLOG = "backlog"  # claims come back full: the other fetchers join in
    SLOT_FREED = "slot freed"  # a handler slot freed up (or an outcome was written)
    OUTCOME_READY = "outcome ready"  # the completer has outcomes to write
    HANDOVER = "handover"  # a fetcher stopped being hungry (the completer writes for itself)
    STOPPING = "stopping"  # stop claiming; running jobs may finish
    CLOSING = "closing"  # the services end
    FINAL = "final"  # the shutdown waits for the completer: its writes are tried, not retried
    REGISTERED = "registered"  # the worker's row is alive again (after a re-registration)
    BEAT_NOW = "beat now"  # a claim found the worker's row dead: heartbeat at once

    # Members are singletons: hash them by identity, in C (Enum's own hash is a Python call,
    # and the drivers look signals up a few times per job).
    __hash__ = object.__hash__


class Lane(enum.Enum):
    """Which connection a :class:`Call` runs on: a lane kept by one component, or any pooled
    connection (``POOL``). Fetcher lanes are numbered by fetcher (see :class:`Call`)."""

    POOL = "pool"
    CLAIM = "claim"  # autocommit, planned once (see lanes.py)
    LIMITED = "limited"  # a transaction per claim of limited tasks
    FINISH = "finish"
    HEARTBEAT = "heartbeat"

    __hash__ = object.__hash__  # as for Signal


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``operation`` once on ``lane`` (fetcher lanes: of fetcher ``fetcher``), within
    ``deadline`` seconds (None: the worker's ``statement_timeout``)."""

    operation: Operation[Any]
    lane: Lane = Lane.POOL
    fetcher: int = 0
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait until ``signal`` is set or ``timeout`` seconds pass (None: no timeout); the driver
    sends back whether the signal was set."""

    signal: Signal
    timeout: float | None


@dataclass(frozen=True, slots=True)
class ListenConnect:
    """(Re)connect the LISTEN connection and LISTEN on the queue's channels."""


@dataclass(frozen=True, slots=True)
class ListenWait:
    """Wait up to ``timeout`` seconds for notifications; the decoded messages are sent back."""

    timeout: float


@dataclass(frozen=True, slots=True)
class ListenPing:
    """Ask the LISTEN connection's server for an answer within ``timeout`` seconds (an error is
    thrown in when none comes: the connection is then replaced)."""

    timeout: float


@dataclass(frozen=True, slots=True)
class ListenClose:
    """Close the LISTEN connection (never raises)."""


class ShutdownStep(enum.Enum):
    """Shutdown steps whose waiting is the driver's own."""

    STOP_RUNNERS = "stop runners"  # no job starts any more; interrupted async handlers stop
    JOIN_COMPLETER = "join completer"  # the completer wrote what it will write
    CLOSE_LANES = "close lanes"  # the components' kept connections go back to the pool
    JOIN_SERVICES = "join services"  # heartbeat, listener, maintenance, scheduler ended


@dataclass(frozen=True, slots=True)
class Shutdown:
    step: ShutdownStep


Effect = Call | Wait | ListenConnect | ListenWait | ListenPing | ListenClose | Shutdown
Service = Generator[Effect, Any, T]
