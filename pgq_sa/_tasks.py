"""The task registry: what a ``@queue.task`` or ``@queue.periodic`` declaration means, validated.

Definitions are checked when they are declared, so a typo in a task option fails at import time,
not when the first job runs.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgq_sa import _validation as validation

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 20

_RATE = re.compile(
    r"\s*(?P<count>\d+)\s*/\s*(?P<amount>\d+(?:\.\d+)?)?\s*"
    r"(?P<unit>ms|s|sec|second|seconds|m|min|minute|minutes|h|hour|hours|d|day|days)\s*"
)
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` job starts per ``period`` seconds, cluster-wide."""

    count: int
    period: float

    @classmethod
    def parse(cls, value: object) -> RateLimit:
        """Parse ``"100/s"``, ``"10/m"``, ``"5/10s"``, ``"1000/h"`` or ``(count, seconds)``."""
        if isinstance(value, RateLimit):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            count = validation._integer(value[0], "rate_limit count")
            period = validation.seconds(value[1], "rate_limit period", allow_zero=False)
        elif isinstance(value, str):
            match = _RATE.fullmatch(value)
            if match is None:
                raise ValueError(
                    f"rate_limit {value!r} is not understood; write COUNT/PERIOD such as "
                    "'100/s', '10/m', '5/10s' or '1000/h'"
                )
            count = int(match["count"])
            period = float(match["amount"] or 1) * _UNIT_SECONDS[match["unit"]]
        else:
            raise TypeError(
                f"rate_limit must be a str like '100/s' or a (count, seconds) tuple, "
                f"got {type(value).__name__}"
            )
        if count < 1 or period <= 0:
            raise ValueError(f"rate_limit {value!r} must allow at least 1 job per positive period")
        return cls(count, period)

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


@dataclass(frozen=True)
class TaskDefinition:
    """A registered task: its handler and the defaults its jobs get."""

    name: str
    handler: Callable[..., Any]
    max_attempts: int
    timeout: float | None
    priority: int
    queue: str
    concurrency: int | None
    rate_limit: RateLimit | None
    transactional: bool = False
    # The Queue it is registered on: a workflow step's handler adds steps through it (their
    # task defaults and payload limit are the queue's).
    owner: Any = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def is_async(self) -> bool:
        """Is the handler an ``async def``? (Read per job; inspecting it costs microseconds.)"""
        return inspect.iscoroutinefunction(self.handler)


def define_task(
    name: object,
    handler: object,
    *,
    max_attempts: object = DEFAULT_MAX_ATTEMPTS,
    timeout: object = None,
    priority: object = 0,
    queue: object = DEFAULT_QUEUE,
    concurrency: object = None,
    rate_limit: object = None,
    transactional: object = False,
) -> TaskDefinition:
    """Validate every option of a task declaration."""
    if not callable(handler):
        raise TypeError(f"a task handler must be callable, got {type(handler).__name__}")
    if concurrency is not None:
        concurrency = validation._integer(concurrency, "concurrency")
        if concurrency < 1:
            raise ValueError(
                f"concurrency must be 1 or more (or None for no limit), got {concurrency}"
            )
    if not isinstance(transactional, bool):
        raise TypeError(f"transactional must be True or False, got {type(transactional).__name__}")
    return TaskDefinition(
        name=validation.task_name(name),
        handler=handler,
        max_attempts=validation.max_attempts(max_attempts),
        timeout=None
        if timeout is None
        else validation.seconds(timeout, "timeout", allow_zero=False),
        priority=validation.priority(priority),
        queue=validation.queue_name(queue),
        concurrency=concurrency,
        rate_limit=None if rate_limit is None else RateLimit.parse(rate_limit),
        transactional=transactional,
    )
