"""pgq_sa's own Alembic environment, used by `pgq-sa db ...` (the standalone door)."""

from pgq_sa.migrations import run_standalone_environment

run_standalone_environment()
