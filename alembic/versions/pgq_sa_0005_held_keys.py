"""pgq_sa 0005: one holder per dedupe key among unfinished jobs, waiting workflow steps included.

The DDL lives in pgq_sa._steps; this file only tells Alembic where the step sits.
"""

from alembic import op

from pgq_sa.migrations import run_revision

revision = "pgq_sa_0005"
down_revision = "pgq_sa_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(op, revision, "up")


def downgrade() -> None:
    run_revision(op, revision, "down")
