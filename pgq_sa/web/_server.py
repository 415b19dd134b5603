"""Serving the dashboard with uvicorn: in the foreground (``pgq-sa web``) or from a thread
(``pgq-sa demo --web``, and the browser tests), and the loopback rule for who may skip auth."""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

import uvicorn

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Is ``host`` reachable only from this machine (127.0.0.0/8, ::1, localhost)?"""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


def _config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )


def serve(app: Any, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn handles both on the main thread)."""
    uvicorn.Server(_config(app, host, port)).run()


class BackgroundServer:
    """The app served by uvicorn on a thread of its own; ``start`` returns its address."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = uvicorn.Server(_config(app, host, port))
        self._thread = threading.Thread(target=self._server.run, name="pgq-sa-web", daemon=True)
        self.host = host
        self.url = ""

    def start(self, timeout: float = 10.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the dashboard could not start on {self.host}")
            if time.monotonic() > deadline:
                raise TimeoutError("the dashboard did not start in time")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = url_of(self.host, port)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
