"""What pgq_sa asks to tell whether a connection pooler shares server sessions between clients."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.sql.expression import Executable


def backend_pid() -> Executable:
    """The process id of the server session that runs this statement."""
    return select(func.pg_backend_pid())
