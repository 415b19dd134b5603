"""GRANT statements for the least-privilege roles, identifiers quoted by the dialect."""

from __future__ import annotations

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement, Sequence, Table
from sqlalchemy.sql.compiler import DDLCompiler

from pgq_sa._schema import QueueTables

JOBS_ID_SEQUENCE = "jobs_id_seq"  # the sequence behind the identity column jobs.id
WORKFLOWS_ID_SEQUENCE = "workflows_id_seq"
GRANTABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "USAGE"})


class Grant(ExecutableDDLElement):
    """``GRANT privileges ON <table | sequence | schema> TO role``.

    Every identifier (schema, table, sequence, columns, role) is quoted by the dialect's
    identifier preparer, never pasted; privileges come from a fixed list. ``columns`` limits a
    table privilege to those columns.
    """

    inherit_cache = False

    def __init__(
        self,
        privilege: str,
        target: Table | Sequence | str,
        role: str,
        columns: tuple[str, ...] = (),
    ) -> None:
        if privilege not in GRANTABLE:
            raise ValueError(f"unknown privilege {privilege!r}")
        if columns and not isinstance(target, Table):
            raise ValueError("column privileges need a table")
        if isinstance(target, Table):
            unknown = set(columns) - set(target.c.keys())
            if unknown:
                raise ValueError(f"{target.name} has no columns {sorted(unknown)}")
        self.privilege = privilege
        self.on = target
        self.role = role
        self.columns = columns


@compiles(Grant)
def _compile_grant(element: Grant, compiler: DDLCompiler, **kw: object) -> str:
    preparer = compiler.preparer
    target = element.on
    if isinstance(target, Table):
        on = "TABLE " + preparer.format_table(target)
    elif isinstance(target, Sequence):
        on = "SEQUENCE " + preparer.format_sequence(target)
    else:
        on = "SCHEMA " + preparer.quote_identifier(target)
    privilege = element.privilege
    if element.columns:
        privilege += " (" + ", ".join(preparer.quote(c) for c in element.columns) + ")"
    return f"GRANT {privilege} ON {on} TO {preparer.quote_identifier(element.role)}"


def jobs_id_sequence(tables: QueueTables) -> Sequence:
    return Sequence(JOBS_ID_SEQUENCE, schema=tables.schema)


def workflows_id_sequence(tables: QueueTables) -> Sequence:
    return Sequence(WORKFLOWS_ID_SEQUENCE, schema=tables.schema)
