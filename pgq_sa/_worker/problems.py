"""A worker's running problems, each told once: WARNING when it starts, INFO when it is over.

A worker that cannot reach its database retries for as long as it runs; logging every failed
attempt would bury the first, useful line. :class:`Problems` remembers which distinct problem
(what failed, and the first line of why) is current for each activity, logs it once at WARNING,
retries quietly (DEBUG), and says so at INFO when that activity works again. When the
application never configured logging, the first line of each problem still reaches stderr, so a
worker started from a script never fails silently.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

log = logging.getLogger("pgq_sa.worker")


def brief(error: BaseException) -> str:
    """The first line of what went wrong, without the SQL a driver error carries."""
    original = getattr(error, "orig", None) or error
    message = str(original).strip()
    return message.splitlines()[0] if message else type(error).__name__


def logging_configured() -> bool:
    """Has the application attached a handler anywhere our WARNINGs would reach?"""
    logger: logging.Logger | None = log
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


@dataclass
class Problems:
    """The current problem of each activity ("claim", "heartbeat", "listener", ...)."""

    current: dict[str, str] = field(default_factory=dict)

    def failed(self, what: str, error: BaseException, retry_in: float, hint: str = "") -> None:
        problem = brief(error) + (f" ({hint})" if hint else "")
        if self.current.get(what) == problem:
            log.debug("%s failed again (%s); retrying in %.2fs", what, problem, retry_in)
            return
        self.current[what] = problem
        log.warning("%s failed (%s); retrying (quietly) until it works", what, problem)
        if not logging_configured():
            print(f"pgq_sa: {what} failed ({problem}); retrying", file=sys.stderr, flush=True)

    def recovered(self, what: str) -> None:
        if self.current.pop(what, None) is not None:
            log.info("%s works again", what)
