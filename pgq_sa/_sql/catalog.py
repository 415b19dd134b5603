"""What the system catalogs say about pgq_sa's schemas: which schemas of a database hold a queue
(recognised by the version marker table every migration door writes)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import VERSION_TABLE


def queue_schemas() -> Executable:
    """The names of the schemas holding a ``pgq_sa_version`` table."""
    return text(
        "SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE c.relname = :marker AND c.relkind = 'r'"
    ).bindparams(marker=VERSION_TABLE)
