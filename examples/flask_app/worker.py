"""The worker process: `python worker.py` (same as `pgq-sa run tasks:queue --threads 4`).

Ctrl-C or SIGTERM: stop claiming, finish the running jobs, hand back the rest, exit.
"""

import logging

from tasks import engine, queue

from pgq_sa import ThreadWorker

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ThreadWorker(queue, engine, threads=4).run()
