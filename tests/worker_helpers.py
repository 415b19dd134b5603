"""Run either worker kind from a test: blocking, or in a background thread with a handle."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy.engine import URL

from pgq_sa import AsyncWorker, Queue, ThreadWorker

KINDS = ["threads", "asyncio", "trio"]


def make_worker(kind: str, queue: Queue, url: Any, **options: Any) -> ThreadWorker | AsyncWorker:
    options.setdefault("poll_interval", 0.2)
    options.setdefault("heartbeat_interval", 0.5)
    options.setdefault("lease_timeout", 5.0)
    size = options.pop("size", 4)
    if kind == "threads":
        return ThreadWorker(queue, url, threads=size, **options)
    if kind == "asyncio" and isinstance(url, URL):
        # what users get from a plain postgresql:// URL on asyncio: asyncpg (and its prepared
        # statements on the worker's lanes); async psycopg is covered by test_drivers.py
        url = url.set(drivername="postgresql")
    return AsyncWorker(queue, url, concurrency=size, **options)


def run_worker(worker: ThreadWorker | AsyncWorker, kind: str, *, until_empty: bool = True) -> None:
    if kind == "threads":
        assert isinstance(worker, ThreadWorker)
        worker.run(until_empty=until_empty)
    else:
        assert isinstance(worker, AsyncWorker)

        async def main() -> None:
            await worker.run(until_empty=until_empty)

        anyio.run(main, backend=kind)


@dataclass
class Running:
    worker: ThreadWorker | AsyncWorker
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def stop(self, timeout: float = 30) -> None:
        self.worker.stop()
        self.join(timeout)

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert self.errors == [], self.errors


def start_worker(
    kind: str, queue: Queue, url: Any, *, until_empty: bool = False, **options: Any
) -> Running:
    worker = make_worker(kind, queue, url, **options)
    running = Running(worker, threading.Thread(target=lambda: None))

    def target() -> None:
        try:
            run_worker(worker, kind, until_empty=until_empty)
        except BaseException as error:  # reported by join()
            running.errors.append(error)

    running.thread = threading.Thread(target=target, name=f"test-worker-{kind}", daemon=True)
    running.thread.start()
    return running
