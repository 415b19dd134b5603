"""The dashboard's way to the database: operations run on the bind it was given.

A sync ``Engine`` (or a URL, from which one is built) runs each operation in a worker thread
(``anyio.to_thread`` through :func:`pgq_sa._ops.drive.run_async`); an ``AsyncEngine`` runs it on
the event loop. Page reads run in a READ ONLY transaction under a statement timeout, so a page can
neither write nor hold a connection for long. What the role may do is checked once and again
after a refusal (:class:`Access`), never guessed from a failure alone.
"""

from __future__ import annotations

import time
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from pgq_sa import _dashboard as dashboard
from pgq_sa._config import make_engine, parse_url
from pgq_sa._dashboard import Access
from pgq_sa._ops.drive import Operation, run_async
from pgq_sa._queue import Queue

T = TypeVar("T")
READ_TIMEOUT = 10.0  # seconds: a page's statements are index-bounded; this is the backstop
ACCESS_TTL = 60.0  # seconds between privilege checks (and at once after a refusal)
INSUFFICIENT_PRIVILEGE = "42501"


def refused(error: BaseException) -> bool:
    """Did PostgreSQL refuse for lack of privilege?"""
    return isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) == (
        INSUFFICIENT_PRIVILEGE
    )


class Database:
    """The bind, the queue's statements, and what the role may do."""

    def __init__(self, bind: Engine | AsyncEngine | str | URL, queue: Queue) -> None:
        self.queue = queue
        self.statements = queue.statements
        self.owned = isinstance(bind, (str, URL))
        if isinstance(bind, (str, URL)):
            bind = make_engine(parse_url(bind), pool_pre_ping=True)
        if not isinstance(bind, (Engine, AsyncEngine)):
            raise TypeError(
                "bind must be a SQLAlchemy Engine, AsyncEngine or database URL, got "
                + type(bind).__name__
            )
        self.bind: Engine | AsyncEngine = bind
        self._reader = bind.execution_options(postgresql_readonly=True)
        self._access: Access | None = None
        self._access_at = 0.0

    @property
    def url(self) -> URL:
        return self.bind.url

    async def read(self, operation: Operation[T]) -> T:
        """Run a read-only operation in a READ ONLY transaction with a statement timeout."""
        timed = dashboard.with_timeout(self.statements, operation, READ_TIMEOUT)
        try:
            result: T = await run_async(self._reader, timed)
            return result
        except DBAPIError as error:
            if refused(error):
                self.forget_access()
            raise

    async def write(self, operation: Operation[T]) -> T:
        """Run an operation that changes something (the existing producer operations)."""
        try:
            return await run_async(self.bind, operation)
        except DBAPIError as error:
            if refused(error):
                self.forget_access()
            raise

    async def access(self) -> Access:
        """What the role may read and do (cached for a minute; re-read after a refusal)."""
        now = time.monotonic()
        if self._access is None or now - self._access_at > ACCESS_TTL:
            self._access = await self.read(dashboard.access(self.statements))
            self._access_at = now
        return self._access

    def forget_access(self) -> None:
        self._access = None

    async def dispose(self) -> None:
        if not self.owned:
            return
        if isinstance(self.bind, AsyncEngine):
            await self.bind.dispose()
        else:
            self.bind.dispose()
