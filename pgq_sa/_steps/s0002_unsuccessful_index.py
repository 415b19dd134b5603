"""Step 0002 (frozen): index of failed and cancelled jobs, for monitoring.

Released: never edit this file, and import nothing from the live package here (tests compare its
DDL with a recorded digest). A change to these objects is a new step.
"""

from __future__ import annotations

REVISION = "pgq_sa_0002"
DESCRIPTION = "index of failed and cancelled jobs, for monitoring"


def up(s: str) -> list[str]:
    return [
        f'CREATE INDEX jobs_unsuccessful_idx ON "{s}".jobs (state, queue, task, id) '
        "WHERE state IN ('failed', 'cancelled')"
    ]


def down(s: str) -> list[str]:
    return [f'DROP INDEX IF EXISTS "{s}".jobs_unsuccessful_idx']
