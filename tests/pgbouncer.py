"""A real PgBouncer in front of the test server, for the tests that go through one.

Started from Debian's ``pgbouncer`` binary (``.ci/run`` installs it) on a free loopback port, with
``auth_type = trust`` and every database name forwarded to the server under test; tests that
need it skip with a one-line reason when the binary is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL

BINARY = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
MISSING = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_address(server: URL) -> str:
    host = server.host or str(server.query.get("host") or "/var/run/postgresql")
    port = server.port or 5432
    return f"host={host} port={port}"


def _accepting(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def running(server: URL, folder: Path, pool_mode: str) -> Iterator[URL]:
    """A PgBouncer in ``pool_mode`` forwarding to ``server``; yields the URL of ``server`` as
    seen through it (same user and database, the bouncer's address)."""
    assert BINARY is not None, MISSING
    port = _free_port()
    user = server.username or "postgres"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = {_server_address(server)}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = {pool_mode}
default_pool_size = 4
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
"""
    )
    command = [BINARY, str(config)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: it reads its files, then switches
        command[1:1] = ["-u", _account(server)]
    log = folder / "pgbouncer.log"
    with log.open("wb") as output:  # its log goes to stderr: a file, never a pipe nobody reads
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _accepting(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {log.read_text()}")
            time.sleep(0.05)
        yield server.set(host="127.0.0.1", port=port).difference_update_query(["host"])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _account(server: URL) -> str:
    """Who PgBouncer runs as: the owner of the server's socket folder (so it may connect there),
    else ``postgres``, else ``nobody``."""
    socket_dir = server.query.get("host") if not server.host else None
    if isinstance(socket_dir, str) and Path(socket_dir).is_dir():
        return pwd.getpwuid(Path(socket_dir).stat().st_uid).pw_name
    for account in ("postgres", "nobody"):
        try:
            pwd.getpwnam(account)
        except KeyError:
            continue
        return account
    raise RuntimeError("no account to run pgbouncer as (it refuses to run as root)")
