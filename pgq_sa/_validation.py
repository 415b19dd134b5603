"""Checks on everything a caller hands us, run before any SQL so bad input never reaches storage.

Each function returns the normalised value or raises ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, unusable value) with a message saying what to pass instead.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

from pgq_sa._schema import (
    MAX_ATTEMPTS_LIMIT,
    MAX_DEDUPE_KEY_LENGTH,
    MAX_QUEUE_NAME_LENGTH,
    MAX_TASK_NAME_LENGTH,
    PRIORITY_MAX,
    PRIORITY_MIN,
)

DEFAULT_MAX_PAYLOAD_BYTES = 1_000_000
_MAX_DELAY_SECONDS = 100 * 365 * 24 * 3600.0
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _name(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    if not value.isascii() and not _is_utf8(value):
        raise ValueError(f"{what} must be valid Unicode (it contains a lone surrogate)")
    return value


def _is_utf8(value: str) -> bool:
    """False for strings PostgreSQL cannot store: lone surrogates have no UTF-8 form."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def task_name(value: object) -> str:
    """A task name: a non-empty str of at most 255 characters without NUL."""
    return _name(value, "task name", MAX_TASK_NAME_LENGTH)


def queue_name(value: object) -> str:
    """A queue name: a non-empty str of at most 255 characters without NUL."""
    return _name(value, "queue name", MAX_QUEUE_NAME_LENGTH)


def schedule_name(value: object) -> str:
    """A schedule name (that of its task): a non-empty str of at most 255 characters."""
    return _name(value, "schedule name", MAX_TASK_NAME_LENGTH)


def dedupe_key(value: object) -> str | None:
    """A dedupe key (or None): a non-empty str of at most 1024 characters without NUL."""
    if value is None:
        return None
    return _name(value, "dedupe_key", MAX_DEDUPE_KEY_LENGTH)


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return value


def priority(value: object) -> int:
    """A priority: an int (not a bool) from -32768 to 32767; higher runs first."""
    number = _integer(value, "priority")
    if not PRIORITY_MIN <= number <= PRIORITY_MAX:
        raise ValueError(f"priority {number} is out of range {PRIORITY_MIN}..{PRIORITY_MAX}")
    return number


def max_attempts(value: object) -> int:
    """How many times a job may start: an int from 1 to 1000."""
    number = _integer(value, "max_attempts")
    if not 1 <= number <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts {number} is out of range 1..{MAX_ATTEMPTS_LIMIT}")
    return number


def byte_limit(value: object, what: str) -> int:
    """A size limit in bytes: an int of at least 1."""
    number = _integer(value, what)
    if number < 1:
        raise ValueError(f"{what} must be 1 or more, got {number}")
    return number


def seconds(value: object, what: str, *, allow_zero: bool = True) -> float:
    """A non-negative, finite duration given as seconds (int/float) or a ``timedelta``."""
    if isinstance(value, timedelta):
        number = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{what} must be seconds (int or float) or a timedelta, got {type(value).__name__}"
        )
    else:
        number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise ValueError(f"{what} must be a finite number of seconds, {bound}; got {value!r}")
    if number > _MAX_DELAY_SECONDS:
        raise ValueError(f"{what} of {number} seconds is more than a century")
    return number


def run_at(value: object) -> datetime:
    """An absolute start time: a timezone-aware ``datetime``.

    Naive datetimes are refused rather than guessed at: their meaning depends on the clock of
    whichever machine reads them. Pass ``datetime.now(timezone.utc) + ...`` or any aware value.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"run_at must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            "run_at must be timezone-aware (naive datetimes are ambiguous); "
            "use e.g. datetime.now(timezone.utc) + timedelta(minutes=5), or pass delay="
        )
    return value


def payload_json(value: Any, *, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str | None:
    """Serialise a payload to JSON text; only JSON types, no NaN/Infinity, within ``limit`` bytes.

    ``None`` is stored as SQL NULL. Tuples become arrays and dict keys become strings, exactly as
    ``json.dumps`` does. Payloads are never pickled.
    """
    if value is None:
        return None
    try:
        encoded = _ENCODER.encode(value)
    except TypeError as error:
        raise TypeError(f"payload must be JSON-serialisable: {error}") from None
    except ValueError as error:
        raise ValueError(f"payload must be valid JSON: {error}") from None
    except RecursionError:
        raise ValueError("payload is nested too deeply (or refers to itself)") from None
    if "\\u0000" in encoded:
        raise ValueError(
            "payload strings must not contain NUL characters (PostgreSQL refuses them)"
        )
    try:
        size = len(encoded.encode())
    except UnicodeEncodeError:
        raise ValueError(
            "payload strings must be valid Unicode (one contains a lone surrogate)"
        ) from None
    if size > limit:
        raise ValueError(f"payload is {size} bytes of JSON; the limit is {limit} bytes")
    return encoded


def result_json(value: Any) -> str | None:
    """Serialise a handler's return value for storage; same rules as payloads, no size limit."""
    return payload_json(value, limit=1 << 30)
