"""pgq_sa 0001: jobs, workers, queues, task limits, schedules.

The DDL lives in pgq_sa._steps; this file only tells Alembic where the step sits.
"""

from alembic import op

from pgq_sa.migrations import run_revision

revision = "pgq_sa_0001"
down_revision = None
branch_labels = ("pgq_sa",)
depends_on = None


def upgrade() -> None:
    run_revision(op, revision, "up")


def downgrade() -> None:
    run_revision(op, revision, "down")
