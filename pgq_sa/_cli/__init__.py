"""The ``pgq-sa`` command line: one module per command group, all registered on :data:`cli`.

Environment variables: PGQ_SA_DATABASE_URL (else DATABASE_URL, else the embedded PostgreSQL) and
PGQ_SA_SCHEMA (else ``pgq``). User mistakes end with a one-line message and a non-zero exit,
never a traceback.
"""

from pgq_sa._cli import (  # noqa: F401
    db,
    demo,
    jobs,
    monitor,
    queues,
    run,
    schedules,
    web,
    workflows,
)
from pgq_sa._cli.app import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
