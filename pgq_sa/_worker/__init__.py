"""The two workers: ``ThreadWorker`` (threads, no event loop) and ``AsyncWorker`` (anyio)."""

from pgq_sa._worker.async_worker import AsyncWorker
from pgq_sa._worker.thread_worker import ThreadWorker

__all__ = ["AsyncWorker", "ThreadWorker"]
