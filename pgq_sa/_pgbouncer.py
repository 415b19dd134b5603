"""Is this engine behind a pooler in transaction (or statement) mode? Workers must not be.

A worker's LISTEN, and the session settings of its claim and finish connections, live in the
server session; a pooler in transaction mode hands that session to other clients between
transactions, so wake-ups are lost and settings leak. From the client side no setting says so
(``SHOW pool_mode`` is PgBouncer's admin console, not something a normal connection can run), but
the consequence can be seen: two client connections of one engine are opened, and

1. client A runs a transaction and notes its server process id (``pg_backend_pid()``);
2. client B opens a transaction and notes its own: a transaction pooler that reuses its most
   recently freed server connection (PgBouncer's default) gives B the session A just released;
3. while B still holds it, A runs a second transaction.

Directly, or through a pooler in session mode, A keeps one server session for as long as it is
connected and no two connected clients share one: if B saw A's process id, or A's changed, the
sessions are shared. A pooler that does not reuse the freed connection at once may go unnoticed,
never the reverse. With asyncpg, the prepared statements this check makes collide in a shared
session, which is the same proof.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from pgq_sa._sql.pooler import backend_pid

FIX = (
    "point workers at PostgreSQL directly, or at a PgBouncer pool in session mode "
    "(pool_mode = session); producers may keep the transaction-pooled URL"
)


def verdict(first: int, other: int, again: int) -> str | None:
    """The warning for the process ids seen by client A, then client B, then A again; None when
    each client kept a server session of its own."""
    if other == first:
        seen = f"two client connections shared the server session of process {first}"
    elif again != first:
        seen = f"one client connection moved from server process {first} to {again}"
    else:
        return None
    return (
        f"the database URL goes through a connection pooler in transaction mode ({seen}): "
        "a worker's LISTEN wake-ups would be lost and its session settings would leak to other "
        f"clients; {FIX}"
    )


def _shared_prepared_statement(error: DBAPIError) -> str:
    """The warning when ``error`` is a prepared statement met in the wrong server session (as
    asyncpg's are through a transaction pooler); any other error is raised again."""
    text = str(error.orig).lower()
    if "prepared statement" in text and ("already exists" in text or "does not exist" in text):
        return (
            "the database URL goes through a connection pooler in transaction mode (prepared "
            f"statements of one client showed up in another's server session); {FIX}"
        )
    raise error


def check_engine(engine: Engine) -> str | None:
    """Run the check on a sync engine; a warning naming the fix, or None."""
    query = backend_pid()
    try:
        with engine.connect() as a, engine.connect() as b:
            first = int(a.execute(query).scalar_one())
            a.commit()
            with b.begin():
                other = int(b.execute(query).scalar_one())
                again = int(a.execute(query).scalar_one())
                a.commit()
    except DBAPIError as error:
        return _shared_prepared_statement(error)
    return verdict(first, other, again)


async def check_async_engine(engine: AsyncEngine) -> str | None:
    """Run the check on an asyncio engine; a warning naming the fix, or None."""
    query = backend_pid()
    try:
        async with engine.connect() as a, engine.connect() as b:
            first = int((await a.execute(query)).scalar_one())
            await a.commit()
            async with b.begin():
                other = int((await b.execute(query)).scalar_one())
                again = int((await a.execute(query)).scalar_one())
                await a.commit()
    except DBAPIError as error:
        return _shared_prepared_statement(error)
    return verdict(first, other, again)
