"""Door 3: the job queue, installed by one of the project's own revisions.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

import pgq_sa.migrations

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Applies every pgq_sa step not yet recorded in pgq.pgq_sa_version. After upgrading pgq_sa,
    # add a new revision with the same call to bring the queue up to date.
    pgq_sa.migrations.upgrade(op)


def downgrade() -> None:
    pgq_sa.migrations.downgrade(op)
