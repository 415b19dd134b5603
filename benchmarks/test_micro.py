"""pytest-benchmark micro-benchmarks of pgq_sa's four hot statements.

``pytest benchmarks/test_micro.py --benchmark-only`` (not part of the default test paths).
The server is ``PGQ_SA_DATABASE_URL`` or the local one; the file makes its own scratch database
(``pgq_sa_bench_<random>``, dropped afterwards) and does not use ``tests/conftest.py``.

* enqueue one job on a Session, commit included;
* ``enqueue_many`` of 10,000 jobs on an Engine (an empty table each round);
* one claim of 10 jobs on a claim lane, as the workers claim;
* one completion of 10 jobs (``protocol.finish`` of ``succeeded`` outcomes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from benchmarks import ours
from benchmarks.scratch_databases import (
    analyze,
    default_server_url,
    execute,
    install,
    scratch_database,
)
from pgq_sa import JobSpec, Queue
from pgq_sa._decisions import Outcome, succeeded
from pgq_sa._ops import worker as protocol
from pgq_sa._worker.lanes import CLAIM_SESSION, SyncDatabase, SyncLane

SCHEMA = "bench_micro"
BATCH = 10
ROUNDS = 200


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A scratch database with the queue installed in ``bench_micro``."""
    with scratch_database(default_server_url()) as scratch:
        install(scratch.engine, SCHEMA)
        yield scratch.engine


@pytest.fixture(scope="module")
def queue() -> Queue:
    return ours.noop_queue(SCHEMA, "threads")


@pytest.fixture
def empty(engine: Engine) -> Engine:
    """The engine, with the jobs table emptied first."""
    execute(engine, f"TRUNCATE {SCHEMA}.jobs")
    return engine


@pytest.fixture
def database(engine: Engine) -> SyncDatabase:
    return SyncDatabase(engine)


@pytest.fixture
def identity(database: SyncDatabase, queue: Queue) -> Iterator[protocol.Identity]:
    """A registered worker identity."""
    identity = protocol.Identity.new("bench")
    database.run(protocol.register(queue.statements, identity, [ours.NOOP], None, BATCH, 5.0, 30.0))
    yield identity
    database.run(protocol.deregister(queue.statements, identity.id))


@pytest.fixture
def claim_lane(database: SyncDatabase) -> Iterator[SyncLane]:
    lane = database.lane(CLAIM_SESSION)
    yield lane
    lane.close()


@pytest.fixture
def finish_lane(database: SyncDatabase) -> Iterator[SyncLane]:
    lane = database.lane()
    yield lane
    lane.close()


def _fill(queue: Queue, engine: Engine, jobs: int) -> None:
    ours.enqueue_noops(queue, engine, jobs)
    analyze(engine, f"{SCHEMA}.jobs")


def test_enqueue_one_job_on_a_session(benchmark: Any, queue: Queue, empty: Engine) -> None:
    def enqueue() -> int:
        with Session(empty) as session:
            job_id = queue.enqueue(session, ours.NOOP)
            session.commit()
        return job_id

    assert benchmark(enqueue) > 0


def test_enqueue_many_10000(benchmark: Any, queue: Queue, empty: Engine) -> None:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        execute(empty, f"TRUNCATE {SCHEMA}.jobs")
        return (empty, [JobSpec(ours.NOOP) for _ in range(10_000)]), {}

    ids = benchmark.pedantic(queue.enqueue_many, setup=setup, rounds=10, warmup_rounds=1)
    assert len(ids) == 10_000


def test_claim_batch_of_10(
    benchmark: Any,
    queue: Queue,
    empty: Engine,
    identity: protocol.Identity,
    claim_lane: SyncLane,
) -> None:
    _fill(queue, empty, BATCH * (ROUNDS + 1))

    def claim() -> list[protocol.Claimed]:
        return claim_lane.run(
            protocol.claim(queue.statements, identity.id, [ours.NOOP], None, BATCH)
        )

    claimed = benchmark.pedantic(claim, rounds=ROUNDS, warmup_rounds=1)
    assert len(claimed) == BATCH


def test_completion_batch_of_10(
    benchmark: Any,
    queue: Queue,
    empty: Engine,
    identity: protocol.Identity,
    claim_lane: SyncLane,
    finish_lane: SyncLane,
) -> None:
    _fill(queue, empty, BATCH * (ROUNDS + 1))

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        claimed = claim_lane.run(
            protocol.claim(queue.statements, identity.id, [ours.NOOP], None, BATCH)
        )
        outcomes = [succeeded(c.job.id, c.job.attempt, None) for c in claimed]
        return (outcomes,), {}

    def finish(outcomes: list[Outcome]) -> protocol.Finished:
        return finish_lane.run(protocol.finish(queue.statements, identity.id, outcomes))

    finished = benchmark.pedantic(finish, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert len(finished.recorded) == BATCH
    assert not finished.lost
