"""Step 0005 (frozen): one holder per dedupe key among every unfinished job, waiting steps included.

Released: never edit this file, and import nothing from the live package here (tests compare its
DDL with a recorded digest). A change to these objects is a new step.

Step 0004 gave waiting workflow steps a unique index of their own, beside the one of live plain
jobs (queued or running). The two did not see each other: a plain job could take a key a waiting
step held, and the statement unblocking that step later would then fail on the live index. One
index over every job that is not finished (``waiting`` written as "none of the finished states")
replaces the step-only one. The enqueue's ``ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL
AND state IN ('queued', 'running')`` infers both unique indexes as arbiters (that predicate implies
this one's), so producers of the previous release, whose statement text is the same, respect
the keys of waiting steps too without a change.
"""

from __future__ import annotations

REVISION = "pgq_sa_0005"
DESCRIPTION = "one holder per dedupe key among unfinished jobs, waiting workflow steps included"

_UNFINISHED = "state NOT IN ('succeeded', 'failed', 'cancelled')"


def up(s: str) -> list[str]:
    q = f'"{s}"'
    return [
        f"CREATE UNIQUE INDEX jobs_held_key_idx ON {q}.jobs (dedupe_key) "
        f"WHERE dedupe_key IS NOT NULL AND {_UNFINISHED}",
        f"DROP INDEX IF EXISTS {q}.jobs_step_dedupe_key_idx",
    ]


def down(s: str) -> list[str]:
    q = f'"{s}"'
    return [
        f"CREATE UNIQUE INDEX IF NOT EXISTS jobs_step_dedupe_key_idx ON {q}.jobs (dedupe_key) "
        "WHERE dedupe_key IS NOT NULL AND workflow_id IS NOT NULL "
        f"AND {_UNFINISHED}",
        f"DROP INDEX IF EXISTS {q}.jobs_held_key_idx",
    ]
