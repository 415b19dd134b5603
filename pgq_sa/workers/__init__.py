"""The two workers: ``ThreadWorker`` (threads, no event loop) and ``AsyncWorker`` (anyio)."""

from pgq_sa.workers.concurrent import AsyncWorker
from pgq_sa.workers.threaded import ThreadWorker

__all__ = ["AsyncWorker", "ThreadWorker"]
