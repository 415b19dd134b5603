"""The project's Alembic environment: nothing in it is specific to pgq_sa but `include_name`."""

from logging.config import fileConfig

from alembic import context
from models import Base

import pgq_sa.migrations
from pgq_sa._config import make_engine, resolve_url

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# PGQ_SA_DATABASE_URL or DATABASE_URL; with neither set, the embedded PostgreSQL.
engine = make_engine(resolve_url().url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_schemas=True,  # so autogenerate must be told to leave the queue's schema alone:
        include_name=pgq_sa.migrations.include_name,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
