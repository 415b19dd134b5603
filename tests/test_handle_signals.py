"""``handle_signals=False``: a worker on the main thread leaves SIGINT/SIGTERM to its host (a web
server that stops the worker from its own shutdown), on every worker kind."""

from __future__ import annotations

import signal

import pytest
from worker_helpers import KINDS, make_worker, run_worker

from pgq_sa import Queue


@pytest.mark.parametrize(
    ("kind", "handle_signals"),
    [*((kind, False) for kind in KINDS), ("threads", True)],  # True: the default, as a control
)
def test_handle_signals_decides_who_owns_sigterm(kind, handle_signals, engine, database_url):
    queue = Queue()
    seen = []

    @queue.task("look")
    def look(job):
        seen.append(signal.getsignal(signal.SIGTERM))

    host_handler = signal.getsignal(signal.SIGTERM)
    queue.enqueue(engine, "look")
    worker = make_worker(kind, queue, database_url, handle_signals=handle_signals)
    run_worker(worker, kind)  # on the main thread, until the job ran
    assert len(seen) == 1
    assert (seen[0] is host_handler) is not handle_signals
    assert signal.getsignal(signal.SIGTERM) is host_handler  # restored, or never touched
