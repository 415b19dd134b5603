"""pgq_sa 0003: jobs.awaited, so that a finished job is announced only when someone waits for it.

The DDL lives in pgq_sa._steps; this file only tells Alembic where the step sits.
"""

from alembic import op

from pgq_sa.migrations import run_revision

revision = "pgq_sa_0003"
down_revision = "pgq_sa_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(op, revision, "up")


def downgrade() -> None:
    run_revision(op, revision, "down")
