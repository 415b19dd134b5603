"""A worker process: `python worker.py threads` (ThreadWorker) or `python worker.py asyncio`
(AsyncWorker). Run both: the steps of one order spread over them.

Ctrl-C or SIGTERM: stop claiming, finish the running steps, hand back the rest, exit.
"""

import logging
import sys

import anyio
from pipeline import engine, queue

from pgq_sa import AsyncWorker, ThreadWorker
from pgq_sa._config import resolve_url

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if sys.argv[1:] == ["asyncio"]:
        anyio.run(AsyncWorker(queue, resolve_url().url, concurrency=20).run)
    else:
        ThreadWorker(queue, engine, threads=4).run()
