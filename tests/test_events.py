"""Job events (``queue.events``) on every worker kind, and the package's logging hygiene."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from pathlib import Path

import anyio
import pytest
from sqlalchemy.orm import Session
from worker_helpers import KINDS, start_worker

from pgq_sa import JobSpec, JobStatus, Queue, Retry
from pgq_sa._events import (
    Cancelled,
    Enqueued,
    Failed,
    JobEvent,
    Rescued,
    Retried,
    Started,
    Succeeded,
)
from pgq_sa._ops import worker as protocol
from pgq_sa._ops.drive import run_sync

pytestmark = [pytest.mark.timeout(120)]

SECRET = "payload-secret-7f3a"


class Recorder:
    """Events as they arrive, with the thread each was emitted on."""

    def __init__(self) -> None:
        self.events: list[tuple[JobEvent, int]] = []
        self._lock = threading.Lock()

    def __call__(self, event: JobEvent) -> None:
        with self._lock:
            self.events.append((event, threading.get_ident()))

    def of(self, job_id: int) -> list[JobEvent]:
        with self._lock:
            return [event for event, _ in self.events if event.job_id == job_id]

    def threads_of(self, job_id: int) -> list[int]:
        with self._lock:
            return [thread for event, thread in self.events if event.job_id == job_id]


def _sequence(events: list[JobEvent]) -> list[tuple[str, int]]:
    return [(event.kind, event.attempt) for event in events]


def _ghost_claim(engine, queue: Queue, task: str) -> protocol.Identity:
    """A worker that registers, claims a job, and falls silent: a crashed worker, as the
    database sees one (its row stops heartbeating, its job stays running)."""
    ghost = protocol.Identity.new("ghost")
    # its own lease is short: the rescue takes its job 1.5 s after it fell silent
    run_sync(engine, protocol.register(queue.statements, ghost, [task], None, 1, 0.25, 1.5))
    claimed = run_sync(engine, protocol.claim(queue.statements, ghost.id, [task], None, 1)).jobs
    assert len(claimed) == 1
    return ghost


@pytest.mark.serial  # its worker's lease is short; a starved machine can make it look silent
@pytest.mark.parametrize("kind", KINDS)
def test_event_sequences_on_every_worker(kind, engine, database_url):
    queue = Queue()
    running = threading.Event()

    @queue.task("ok")
    def ok(job):
        return {"seen": len(job.payload["secret"])}

    @queue.task("ok.async")
    async def ok_async(job):
        await anyio.sleep(0)

    @queue.task("flaky", max_attempts=2)
    def flaky(job):
        if job.attempt == 1:
            raise Retry(delay=0)
        raise ValueError("second attempt broke")

    @queue.task("stoppable")
    def stoppable(job):
        running.set()
        assert job.wait_cancelled(60)

    @queue.task("orphan")
    def orphan(job):
        return None

    recorder = Recorder()
    subscription = queue.events.subscribe(recorder)
    ids = {name: queue.enqueue(engine, name, {"secret": SECRET}) for name in queue.tasks}
    ghost = _ghost_claim(engine, queue, "orphan")
    worker = start_worker(kind, queue, database_url, heartbeat_interval=0.25, lease_timeout=1.5)
    try:
        assert running.wait(60)
        assert queue.cancel(engine, ids["stoppable"])
        infos = {name: queue.wait(engine, job_id, timeout=60) for name, job_id in ids.items()}
    finally:
        worker.stop()
    subscription.cancel()
    assert infos["ok"].status is JobStatus.succeeded
    assert infos["flaky"].status is JobStatus.failed
    assert infos["stoppable"].status is JobStatus.cancelled
    assert infos["orphan"].status is JobStatus.succeeded

    assert _sequence(recorder.of(ids["ok"])) == [("enqueued", 0), ("started", 1), ("succeeded", 1)]
    assert _sequence(recorder.of(ids["ok.async"])) == [
        ("enqueued", 0),
        ("started", 1),
        ("succeeded", 1),
    ]
    assert _sequence(recorder.of(ids["flaky"])) == [
        ("enqueued", 0),
        ("started", 1),
        ("retried", 1),
        ("started", 2),
        ("failed", 2),
    ]
    assert _sequence(recorder.of(ids["stoppable"])) == [
        ("enqueued", 0),
        ("started", 1),
        ("cancelled", 1),
    ]
    # The rescue's answer and the next claim race inside one worker: the job is claimable once
    # the rescue commits, and a fetcher may claim and start it before the maintenance task has
    # read the rescue's answer and emitted `rescued` (seen on asyncio under load). So `rescued`
    # of attempt 1 comes after `enqueued`, and attempt 2's events keep their own order.
    rescued = _sequence(recorder.of(ids["orphan"]))
    assert rescued[0] == ("enqueued", 0)
    assert sorted(rescued[1:]) == sorted([("rescued", 1), ("started", 2), ("succeeded", 2)])
    assert [e for e in rescued if e[1] == 2] == [("started", 2), ("succeeded", 2)]

    worker_id = worker.worker.id
    for name, job_id in ids.items():
        events = recorder.of(job_id)
        assert all(e.task == name and e.queue == "default" for e in events)
        enqueued = events[0]
        assert isinstance(enqueued, Enqueued)
        assert enqueued.worker_id is None
        for event in events[1:]:
            if isinstance(event, Rescued):
                assert (event.worker_id, event.state) == (ghost.id, "queued")
                continue
            assert event.worker_id == worker_id
            if isinstance(event, Started):
                assert event.wait is not None
                assert 0 <= event.wait < 60
            else:
                assert isinstance(event, (Succeeded, Failed, Retried, Cancelled))
                assert 0 <= event.run < 60
                assert event.total is not None
                assert event.total >= event.run
        # started and its outcome come from the same thread (or loop): the handler's
        threads = recorder.threads_of(job_id)
        started_at = [i for i, e in enumerate(events) if isinstance(e, Started)]
        for i in started_at:
            assert threads[i] == threads[i + 1]

    retried = recorder.of(ids["flaky"])[2]
    assert isinstance(retried, Retried)
    assert (retried.error_type, retried.delay) == ("pgq_sa.Retry", 0)
    failed = recorder.of(ids["flaky"])[4]
    assert isinstance(failed, Failed)
    assert (failed.error_type, failed.error_message) == ("ValueError", "second attempt broke")
    cancelled = recorder.of(ids["stoppable"])[2]
    assert isinstance(cancelled, Cancelled)
    assert cancelled.error_type == "pgq_sa.JobCancelled"
    assert SECRET not in repr(recorder.events)


def test_enqueued_fires_once_per_created_job(engine):
    queue = Queue()
    recorder = Recorder()
    queue.events.subscribe(recorder, kinds=["enqueued"])
    first = queue.enqueue(engine, "t", dedupe_key="k")
    assert queue.enqueue(engine, "t", dedupe_key="k") == first  # held: nothing created
    many = queue.enqueue_many(
        engine, [JobSpec("t", queue="q1"), JobSpec("t", dedupe_key="k"), JobSpec("u")]
    )
    assert many[1] == first
    later = anyio.run(queue.enqueue_async, engine, "v")
    with Session(engine) as session:  # fires when the insert ran: before (and without) commit
        rolled_back = queue.enqueue(session, "t")
        session.rollback()
    assert [(e.job_id, e.task, e.queue) for e, _ in recorder.events] == [
        (first, "t", "default"),
        (many[0], "t", "q1"),
        (many[2], "u", "default"),
        (later, "v", "default"),
        (rolled_back, "t", "default"),
    ]
    assert queue.get(engine, rolled_back) is None


def test_failing_observers_never_break_enqueue_or_workers(engine, database_url, caplog):
    caplog.set_level(logging.DEBUG, logger="pgq_sa")
    queue = Queue()

    @queue.task("ok")
    def ok(job):
        return "done"

    @queue.task("broken", max_attempts=1)
    def broken(job):
        raise RuntimeError("handler broke")

    def bad_subscriber(event):
        raise RuntimeError("subscriber broke")

    def bad_provider(task, queue_name):
        raise RuntimeError("provider broke")

    class BadEnter:
        def __enter__(self):
            raise RuntimeError("scope broke on entry")

        def __exit__(self, *exc_info):
            return False

    @contextlib.contextmanager
    def bad_exit(job):
        yield
        raise RuntimeError("scope broke on exit")

    def bad_factory(job):
        raise RuntimeError("scope factory broke")

    good = Recorder()
    attached = [
        queue.events.subscribe(bad_subscriber),
        queue.events.add_meta_provider(bad_provider),
        queue.events.add_meta_provider(lambda task, name: {"unstorable": object()}),
        queue.events.add_handler_scope(lambda job: BadEnter()),
        queue.events.add_handler_scope(bad_exit),
        queue.events.add_handler_scope(bad_factory),
        queue.events.subscribe(good),
    ]
    ok_id = queue.enqueue(engine, "ok", {"secret": SECRET})
    broken_id = queue.enqueue(engine, "broken", {"secret": SECRET})
    worker = start_worker("threads", queue, database_url, until_empty=True)
    worker.join(60)
    assert queue.get(engine, ok_id).status is JobStatus.succeeded
    assert queue.get(engine, ok_id).result == "done"
    assert queue.get(engine, broken_id).status is JobStatus.failed
    assert _sequence(good.of(ok_id)) == [("enqueued", 0), ("started", 1), ("succeeded", 1)]
    assert _sequence(good.of(broken_id)) == [("enqueued", 0), ("started", 1), ("failed", 1)]
    messages = [r.getMessage() for r in caplog.records if r.name == "pgq_sa._events"]
    assert sum("event subscriber" in m for m in messages) == 6
    assert sum("meta provider" in m for m in messages) == 4
    assert sum("failed on entry" in m for m in messages) == 2
    assert sum("failed on exit" in m for m in messages) == 2
    assert sum("handler scope" in m and "failed for job" in m for m in messages) == 2
    assert SECRET not in caplog.text  # payloads are never logged, even at DEBUG

    for subscription in attached:
        subscription.cancel()
        subscription.cancel()  # idempotent
    assert not queue.events.active
    queue.enqueue(engine, "ok")
    assert len(good.events) == 6


def test_subscribe_refuses_bad_input():
    hub = Queue().events
    with pytest.raises(TypeError, match="callable"):
        hub.subscribe("print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a str"):
        hub.subscribe(print, kinds="started")
    with pytest.raises(ValueError, match="unknown event kinds"):
        hub.subscribe(print, kinds=["started", "exploded"])
    with pytest.raises(TypeError, match="callable"):
        hub.add_meta_provider(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        hub.add_handler_scope(42)  # type: ignore[arg-type]
    assert not hub.active


def test_every_logger_is_under_pgq_sa():
    package = Path(__file__).parent.parent / "pgq_sa"
    names = set()
    for source in package.rglob("*.py"):
        text = source.read_text()
        calls = re.findall(r"getLogger\(([^)]*)\)", text)
        for argument in calls:
            assert re.fullmatch(r"\"pgq_sa(\.[a-z_.]+)?\"", argument), (source, argument)
            names.add(argument.strip('"'))
    assert "pgq_sa.worker" in names
    handlers = logging.getLogger("pgq_sa").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
