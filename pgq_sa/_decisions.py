"""Pure decisions shared by both workers: what a finished attempt means for its job.

No I/O and no clock: the outcome of one handler run goes in, the next state of the job comes out
(succeeded, retried after a backoff, failed, or cancelled). Both workers call these same functions
and hand the result to the same ``finish`` statement.
"""

from __future__ import annotations

import json
import random
import traceback
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pgq_sa import _validation as validation
from pgq_sa._job import Retry

OutcomeState = Literal["succeeded", "failed", "queued", "cancelled"]

BACKOFF_BASE = 1.0
BACKOFF_CAP = 3600.0
BACKOFF_JITTER = 0.25


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, capped, with jitter."""
    exponent = min(max(attempt - 1, 0), 30)
    delay: float = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**exponent)
    return float(delay * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * rng()))


class Outcome(NamedTuple):
    """What to write for one finished attempt: the job's next state and its details. (A named
    tuple: one is made per job, and a frozen dataclass costs three times as much to make.)"""

    job_id: int
    attempt: int
    state: OutcomeState
    delay: float | None = None
    result: str | None = None
    error: str | None = None
    written: bool = False  # already recorded (a transactional task's own transaction)


def error_type_name(kind: type[BaseException]) -> str:
    """How an exception's type is stored: a builtin by its name, one of pgq_sa's own by the name
    ``pgq_sa`` exports it under (``pgq_sa.JobTimeout``, stable whichever module defines it),
    anything else by its module and name."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    if kind.__module__.split(".")[0] == "pgq_sa":
        return f"pgq_sa.{kind.__qualname__}"
    return f"{kind.__module__}.{kind.__qualname__}"


def error_json(error: BaseException, attempt: int, *, with_traceback: bool = True) -> str:
    """An exception as stored JSON: its type, message and traceback."""
    kind = type(error)
    name = error_type_name(kind)
    text = (
        "".join(traceback.format_exception(kind, error, error.__traceback__))
        if with_traceback
        else None
    )
    return json.dumps(
        {"type": name, "message": str(error), "traceback": text, "attempt": attempt},
        ensure_ascii=False,
    )


def succeeded(job_id: int, attempt: int, value: Any) -> Outcome:
    """The handler returned ``value``; an unstorable value fails the attempt instead."""
    try:
        result = validation.result_json(value)
    except (TypeError, ValueError) as error:
        problem = TypeError(f"the handler's return value cannot be stored as JSON: {error}")
        return Outcome(job_id, attempt, "failed", error=error_json(problem, attempt))
    return Outcome(job_id, attempt, "succeeded", result=result)


def errored(
    job_id: int,
    attempt: int,
    max_attempts: int,
    error: BaseException,
    *,
    cancelled: bool = False,
    retry_delay: Callable[[int], float] = backoff,
) -> Outcome:
    """The handler raised ``error`` (or was timed out / cancelled): retry, fail or cancel."""
    if cancelled:
        return Outcome(job_id, attempt, "cancelled", error=error_json(error, attempt))
    if isinstance(error, Retry):
        if attempt >= max_attempts:
            exhausted = RuntimeError(
                f"Retry requested but all {max_attempts} attempts are used"
                + (f": {error.reason}" if error.reason else "")
            )
            return Outcome(
                job_id,
                attempt,
                "failed",
                error=error_json(exhausted, attempt, with_traceback=False),
            )
        delay = error.delay if error.delay is not None else retry_delay(attempt)
        return Outcome(
            job_id,
            attempt,
            "queued",
            delay=delay,
            error=error_json(error, attempt, with_traceback=False),
        )
    stored = error_json(error, attempt)
    if attempt >= max_attempts:
        return Outcome(job_id, attempt, "failed", error=stored)
    return Outcome(job_id, attempt, "queued", delay=retry_delay(attempt), error=stored)


def finish_parameters(outcomes: list[Outcome]) -> dict[str, str]:
    """The ``finish`` statement's parameters: one JSON array per column."""
    dumps = json.dumps
    return {
        "ids": dumps([o.job_id for o in outcomes]),
        "attempts": dumps([o.attempt for o in outcomes]),
        "outcomes": dumps([o.state for o in outcomes]),
        "delays": dumps([o.delay for o in outcomes]),
        "results": "[" + ",".join(o.result or "null" for o in outcomes) + "]",
        "errors": "[" + ",".join(o.error or "null" for o in outcomes) + "]",
    }
