"""Child processes of the multi-process scenarios: producers and pgq_sa workers.

Started with the ``spawn`` method, so everything a child needs is rebuilt from plain arguments
(URL text, schema, kind): the no-op handlers are closures and never cross a process boundary.
Every child connects and warms up first, then signals ``ready`` and waits for ``go``, so
process start-up and imports stay outside the clock.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.synchronize import Event

from sqlalchemy.engine import make_url

from benchmarks import ours
from benchmarks.scratch_databases import warm
from pgq_sa import JobSpec, Queue
from pgq_sa._config import make_engine


def _wait_for(event: Event) -> None:
    """Poll ``event``: a process that exits while waiting on a multiprocessing Event leaves a
    sleeper behind, and the parent's ``set()`` then blocks for ever."""
    while not event.is_set():
        time.sleep(0.01)


def produce(url: str, schema: str, batch: int, ready: Event, go: Event, stop: Event) -> None:
    """Enqueue ``batch`` no-op jobs per committed ``enqueue_many`` until ``stop`` is set."""
    engine = make_engine(make_url(url))
    queue = Queue(schema=schema)
    specs = [JobSpec(ours.NOOP) for _ in range(batch)]
    try:
        warm(engine, 1)
        ready.set()
        _wait_for(go)
        while not stop.is_set():
            queue.enqueue_many(engine, specs)
    finally:
        engine.dispose()


def work(
    kind: str,
    url: str,
    schema: str,
    batch_size: int,
    until_empty: bool,
    ready: Event,
    go: Event,
    stop: Event,
) -> None:
    """Run one pgq_sa worker of ``kind``: until the queue is empty, or until ``stop`` is set."""
    parsed = make_url(url)
    engine = make_engine(parsed)
    queue = ours.noop_queue(schema, kind)
    watched = ours.Watched()
    try:
        warm(engine)
        ready.set()
        _wait_for(go)

        def stopper() -> None:
            _wait_for(stop)
            while watched.worker is None:
                time.sleep(0.05)
            watched.worker.stop()

        threading.Thread(target=stopper, name="bench-stopper", daemon=True).start()
        ours.drain(
            kind, queue, parsed, engine, batch_size, watched, 3600.0, until_empty=until_empty
        )
    finally:
        engine.dispose()
