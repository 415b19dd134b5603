"""pgq_sa 0004: workflows and job dependencies, each worker's own lease, settings.

The DDL lives in pgq_sa._steps; this file only tells Alembic where the step sits.
"""

from alembic import op

from pgq_sa.migrations import run_revision

revision = "pgq_sa_0004"
down_revision = "pgq_sa_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(op, revision, "up")


def downgrade() -> None:
    run_revision(op, revision, "down")
