"""Step 0003 (frozen): jobs.awaited: a finished job is announced only when someone waits for it.

Released: never edit this file, and import nothing from the live package here (tests compare its
DDL with a recorded digest). A change to these objects is a new step.
"""

from __future__ import annotations

REVISION = "pgq_sa_0003"
DESCRIPTION = "jobs.awaited: a finished job is announced only when someone waits for it"


def up(s: str) -> list[str]:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    return [f'ALTER TABLE "{s}".jobs ADD COLUMN awaited boolean NOT NULL DEFAULT false']


def down(s: str) -> list[str]:
    return [f'ALTER TABLE "{s}".jobs DROP COLUMN IF EXISTS awaited']
