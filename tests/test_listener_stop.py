"""A worker's stop does not wait for its listener to look at its flags again: the listener's
wait on the LISTEN connection is interrupted when the worker closes, on every kind.

Made deterministic by stretching that wait to ten minutes: a worker that sat it out would not
return from ``run(until_empty=True)`` within the test's bound (it used to take up to half a
second at every stop, which was a quarter of a 30,000-job drain's tail on asyncio).
"""

from __future__ import annotations

import pytest
from worker_helpers import KINDS, make_worker, run_worker

from pgq_sa import Queue
from pgq_sa._worker import services


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_a_stop_interrupts_the_listener_s_wait(kind, engine, database_url, monkeypatch):
    monkeypatch.setattr(services, "LISTEN_WAIT", 600.0)
    queue = Queue()
    ran: list[int] = []

    @queue.task("t")
    def t(job):
        ran.append(job.id)

    job_id = queue.enqueue(engine, "t")
    worker = make_worker(kind, queue, database_url, poll_interval=0.2)
    run_worker(worker, kind, until_empty=True)  # returns once drained: the wait was cut short
    assert ran == [job_id]
