"""pgq_sa 0006: the jobs row rules in a trigger on producer columns, not CHECKs on every write.

The DDL lives in pgq_sa._steps; this file only tells Alembic where the step sits.
"""

from alembic import op

from pgq_sa.migrations import run_revision

revision = "pgq_sa_0006"
down_revision = "pgq_sa_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(op, revision, "up")


def downgrade() -> None:
    run_revision(op, revision, "down")
