"""The worker core without a database: its accounting and decisions, and its services stepped
effect by effect (the answer to each database call is given by the test).

These are unit tests of pure code (no I/O happens in the core); the same scenarios run against
PostgreSQL through both drivers in test_workers.py, test_lifecycle.py and the others.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timezone

import pytest
from sqlalchemy.exc import OperationalError

from pgq_sa import Queue
from pgq_sa._decisions import Outcome
from pgq_sa._job import Job
from pgq_sa._ops.worker import Claimed, Claims, Finished, Identity
from pgq_sa._worker import services
from pgq_sa._worker.core import MAX_FINISH_BATCH, WorkerCore, attempt_key, job_id_of
from pgq_sa._worker.effects import Call, Lane, Shutdown, ShutdownStep, Signal, Wait
from pgq_sa._worker.options import worker_options

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


class RecordingRuntime:
    """The core's Runtime, recording what the core asked for."""

    def __init__(self) -> None:
        self.signals: set[Signal] = set()
        self.later: list[tuple[float, Signal]] = []
        self.dispatched: list[Claimed] = []
        self.interrupted: list[int] = []

    def set(self, signal: Signal) -> None:
        self.signals.add(signal)

    def clear(self, signal: Signal) -> None:
        self.signals.discard(signal)

    def call_later(self, delay: float, signal: Signal) -> None:
        self.later.append((delay, signal))

    def dispatch(self, items: list[Claimed]) -> None:
        self.dispatched.extend(items)

    def interrupt(self, job: Job) -> None:
        self.interrupted.append(job.id)


def make_core(capacity=10, batch_size=4, *, limited=False, until_empty=False) -> WorkerCore:
    queue = Queue()

    @queue.task("free")
    def free(job):
        return None

    if limited:

        @queue.task("limited", concurrency=2)
        def limited_task(job):
            return None

    options = worker_options(
        queue,
        capacity=capacity,
        capacity_name="threads",
        batch_size=batch_size,
        queues=None,
        heartbeat_interval=1.0,
        lease_timeout=3.0,
        poll_interval=0.5,
        shutdown_timeout=5.0,
    )
    core = WorkerCore(queue, options, Identity.new("test"), RecordingRuntime(), until_empty)
    core.mark_registered()
    return core


_ids = iter(range(1, 10**9))


def claimed(count: int, task: str = "free") -> list[Claimed]:
    return [
        Claimed(Job(next(_ids), task, None, 1, 3, 0, "default", NOW), None, False)
        for _ in range(count)
    ]


def succeeded(item: Claimed) -> Outcome:
    return Outcome(item.job.id, item.job.attempt, "succeeded")


# --- accounting ------------------------------------------------------------------------------


def test_reservations_never_exceed_the_free_slots():
    core = make_core(capacity=10, batch_size=4)
    first, second, third = core.reserve(), core.reserve(), core.reserve()
    assert [r.limit for r in (first, second, third)] == [4, 4, 2]
    assert core.reserve() is None  # every slot reserved
    core.record_claim(first, claimed(1))  # three slots come back
    assert core.busy == 7
    assert core.reserve().limit == 3


@pytest.mark.parametrize("seed", range(20))
def test_busy_slots_always_match_reservations_plus_running_jobs(seed):
    """Random interleavings of reserve / answer / start / finish / write keep the books."""
    rng = random.Random(seed)
    core = make_core(capacity=rng.randint(1, 20), batch_size=rng.randint(1, 8))
    open_reservations, started = [], []
    runtime = core.runtime
    for _ in range(500):
        action = rng.choice(["reserve", "answer", "start", "finish", "write"])
        if action == "reserve" and (reservation := core.reserve()) is not None:
            open_reservations.append(reservation)
        elif action == "answer" and open_reservations:
            reservation = open_reservations.pop(rng.randrange(len(open_reservations)))
            if reservation.piggyback:
                core.written(reservation.piggyback, None)
            core.record_claim(reservation, claimed(rng.randint(0, reservation.limit)))
        elif action == "start" and runtime.dispatched:
            item = runtime.dispatched.pop(0)
            assert core.start(item) is not None
            started.append(item)
        elif action == "finish" and started:
            item = started.pop(rng.randrange(len(started)))
            core.release(item.job, succeeded(item))
        elif action == "write" and core.pending:
            core.written(core.take_batch(), None)
        reserved = sum(r.limit for r in open_reservations)
        assert core.busy == reserved + len(runtime.dispatched) + len(started)
        assert 0 <= core.busy <= core.options.capacity
        riding = sum(len(r.piggyback or ()) for r in open_reservations)
        held = len(runtime.dispatched) + len(started) + len(core.pending) + riding
        assert core.unwritten == len(core.held) == held


def test_pending_outcomes_ride_along_with_the_next_claim():
    core = make_core(capacity=4, batch_size=4)
    reservation = core.reserve()
    core.record_claim(reservation, items := claimed(2))
    for item in items:
        core.start(item)
        core.release(item.job, succeeded(item))
    piggyback = core.reserve()
    assert [o.job_id for o in piggyback.piggyback] == [i.job.id for i in items]
    assert core.pending == []
    assert core.taken == 2
    core.claim_refused(piggyback)  # the claim gave up: the outcomes wait for the completer
    assert [o.job_id for o in core.pending] == [i.job.id for i in items]


def test_limited_tasks_never_ride_along():
    core = make_core(limited=True)
    reservation = core.reserve()
    core.record_claim(reservation, items := claimed(1))
    core.start(items[0])
    core.release(items[0].job, succeeded(items[0]))
    assert core.reserve().piggyback is None  # limited tasks claim in a transaction of their own


def test_a_stop_hands_back_exactly_what_did_not_start():
    core = make_core(capacity=8, batch_size=8)
    core.record_claim(core.reserve(), items := claimed(5))
    running = items[:2]
    for item in running:
        assert core.start(item) is not None
    core.begin_stop()
    for item in items[2:]:
        assert core.start(item) is None  # not started: left to the final hand-back
    assert core.held_ids() == sorted(item.job.id for item in running)
    assert core.busy == 2
    # the grace period ends with one of the two still running
    core.release(running[0].job, succeeded(running[0]))
    interrupted = core.interrupt_unfinished()
    assert [job.id for job in interrupted] == [running[1].job.id]
    core.release(running[1].job, succeeded(running[1]))  # interrupted: not recorded
    assert [o.job_id for o in core.pending] == [running[0].job.id]
    core.written(core.take_batch(), None)
    assert core.held == set()
    assert core.unwritten == 0
    assert core.busy == 0


def test_writes_wake_the_leader_when_it_matters():
    core = make_core()
    core.runtime.signals.clear()
    core.written([], None)
    assert Signal.WAKE not in core.runtime.signals  # nothing to re-check
    core.until_empty = True
    core.written([], None)
    assert Signal.WAKE in core.runtime.signals  # until_empty re-checks after every write
    limited = make_core(limited=True)
    limited.runtime.signals.clear()
    limited.written([], None)
    assert Signal.WAKE in limited.runtime.signals  # a limited task's slot may have freed


def test_a_retry_due_later_wakes_the_leader_then():
    core = make_core()
    core.clock = lambda: 1000.0
    later = datetime.fromtimestamp(1007.5, timezone.utc)
    core.written([], Finished({}, (), later))
    assert core.runtime.later == [(7.5, Signal.WAKE)]


def test_until_empty_needs_an_empty_claim_no_work_and_no_write_since():
    core = make_core(until_empty=True)
    reservation = core.reserve()
    core.record_claim(reservation, [])
    assert core.drained(reservation, 0)
    reservation = core.reserve()
    core.record_claim(reservation, [])
    core.written([], None)  # a write during the claim may have queued a retry that is due
    assert not core.drained(reservation, 0)
    reservation = core.reserve()
    core.record_claim(reservation, items := claimed(1))
    assert not core.drained(reservation, 1)
    core.start(items[0])
    reservation = core.reserve()
    core.record_claim(reservation, [])
    assert not core.drained(reservation, 0)  # one still runs


def test_until_empty_does_not_trust_a_claim_that_found_the_row_dead():
    """A claim by a worker whose row was rescued claims nothing, however much is queued (seen
    once on CI: a rescued step's retry was left queued because the worker stopped here)."""
    core = make_core(until_empty=True)
    reservation = core.reserve()
    core.claim_answered(alive=False)
    core.record_claim(reservation, [])
    assert not core.drained(reservation, 0)
    core.mark_registered()
    reservation = core.reserve()
    core.record_claim(reservation, [])
    assert core.drained(reservation, 0)


def test_a_dead_row_stops_claims_until_registered_again():
    core = make_core()
    old = core.worker_id
    core.claim_answered(alive=False)
    assert core.reserve() is None
    assert Signal.BEAT_NOW in core.runtime.signals
    core.reincarnate()
    core.mark_registered()
    assert core.worker_id != old
    assert core.reserve() is not None


def test_cancel_reaches_only_jobs_running_here():
    core = make_core()
    core.record_claim(core.reserve(), items := claimed(2))
    core.start(items[0])
    core.cancel([items[0].job.id, 999_999])
    assert items[0].job.cancel_reason == "cancel"
    assert core.runtime.interrupted == [items[0].job.id]


def test_finish_batches_are_bounded():
    core = make_core(capacity=5000, batch_size=5000)
    core.pending = [Outcome(n, 1, "succeeded") for n in range(2500)]
    assert len(core.take_batch()) == MAX_FINISH_BATCH
    assert len(core.pending) == 2500 - MAX_FINISH_BATCH


# --- services, stepped ---------------------------------------------------------------------------


def step(service, sent=None, error=None):
    done, value = services.advance(service, sent, error)
    assert not done, f"the service ended with {value!r}"
    return value


def test_the_leader_claims_a_batch_then_waits_for_a_wake_up():
    core = make_core(capacity=10, batch_size=4)
    fetcher = services.fetcher(core, 0)
    call = step(fetcher)
    assert isinstance(call, Call)
    assert call.lane is Lane.CLAIM
    statement, params = next(call.operation)
    assert statement is core.statements.claim
    assert params["limit"] == 4
    effect = step(fetcher, Claims(claimed(4)))  # full: claim again at once
    assert isinstance(effect, Call)
    assert core.hungry == 1
    effect = step(fetcher, Claims(claimed(1)))  # not full: wait for a NOTIFY or the poll interval
    assert effect == Wait(Signal.WAKE, core.options.poll_interval)
    assert core.hungry == 0
    assert len(core.runtime.dispatched) == 5


def test_a_fetcher_with_no_free_slot_waits_for_the_next_release_not_an_old_one():
    core = make_core(capacity=4, batch_size=4)
    core.record_claim(core.reserve(), items := claimed(4))
    core.start(items[0])
    core.release(items[0].job, succeeded(items[0]))  # sets SLOT_FREED
    core.record_claim(core.reserve(), claimed(1))  # every slot taken again
    assert Signal.SLOT_FREED in core.runtime.signals
    fetcher = services.fetcher(core, 1)
    assert step(fetcher) == Wait(Signal.SLOT_FREED, core.options.poll_interval)
    assert Signal.SLOT_FREED not in core.runtime.signals  # else the wait ends at once: a spin
    core.start(items[1])
    core.release(items[1].job, succeeded(items[1]))
    assert Signal.SLOT_FREED in core.runtime.signals


def test_a_claim_with_pending_outcomes_writes_them_in_the_same_statement():
    core = make_core(capacity=4, batch_size=4)
    core.record_claim(core.reserve(), items := claimed(1))
    core.start(items[0])
    core.release(items[0].job, succeeded(items[0]))
    fetcher = services.fetcher(core, 0)
    call = step(fetcher)
    statement, _params = next(call.operation)
    assert statement is core.statements.finish_and_claim_plain  # no workflow step among them
    finished = Finished({items[0].job.id: "succeeded"}, (), None)
    step(fetcher, (finished, Claims([])))
    assert core.processed == 1
    assert core.unwritten == 0


def test_only_outcomes_of_workflow_steps_pay_for_settling_dependents():
    """The finish statements without the workflow unblocking (a third cheaper) are used only
    when no outcome of the batch is of a workflow step."""
    core = make_core(capacity=4, batch_size=4)
    plain = claimed(1)
    step_job = dataclasses.replace(claimed(1)[0].job, workflow_id=7)
    core.record_claim(core.reserve(), items := [*plain, Claimed(step_job, None, False)])
    for item in items:
        core.start(item)
        core.release(item.job, succeeded(item))
    assert core.plain([succeeded(items[0])])
    assert not core.plain([succeeded(items[1])])
    fetcher = services.fetcher(core, 0)
    statement, _ = next(step(fetcher).operation)
    assert statement is core.statements.finish_and_claim  # the batch holds the step's outcome
    step(fetcher, (Finished({i.job.id: "succeeded" for i in items}, (), None), Claims([])))
    assert core.steps == set()  # written: forgotten


def test_retrying_backs_off_and_gives_up_only_when_told():
    core = make_core()
    fetcher = services.fetcher(core, 0)
    step(fetcher)
    error = OperationalError("SELECT", {}, Exception("server closed the connection"))
    waits = []
    for _ in range(4):
        wait = step(fetcher, error=error)
        waits.append(wait.timeout)
        assert wait.signal is Signal.STOPPING  # a claim stops retrying once the worker stops
        assert isinstance(step(fetcher, False), Call)  # not stopped: try again
    assert waits == list(services.RETRY_DELAYS[:4])
    assert core.problems.current == {"claim": "server closed the connection"}
    wait = step(fetcher, error=error)
    core.begin_stop()
    done, _ = services.advance(fetcher, True, None)  # stopped while waiting: it gives up
    assert done
    assert core.busy == 0  # its reservation was given back


def test_a_claim_cut_by_the_stop_is_no_problem():
    """A stop cuts claims in flight (they may never be answered): the failure that follows is
    the stop's own doing, not a database problem to warn about; it gives up at once."""
    for pending in (False, True):  # a plain claim, and one carrying outcomes
        core = make_core(capacity=4, batch_size=4)
        if pending:
            core.record_claim(core.reserve(), items := claimed(1))
            core.start(items[0])
            core.release(items[0].job, succeeded(items[0]))
        fetcher = services.fetcher(core, 0)
        step(fetcher)
        core.begin_stop()
        cut = OperationalError("SELECT", {}, Exception("cut by the stop"))
        done, _ = services.advance(fetcher, None, cut)
        if not done:  # a plain claim waits on STOPPING, which is set: it gives up
            done, _ = services.advance(fetcher, True, None)
        assert done
        assert core.problems.current == {}
        assert core.busy == 0
        assert len(core.pending) == int(pending)  # outcomes went back to the completer


def test_until_empty_stops_the_worker_once_drained():
    core = make_core(until_empty=True)
    fetcher = services.fetcher(core, 0)
    step(fetcher)
    done, _ = services.advance(fetcher, Claims([]), None)
    assert done
    assert core.stopping


def test_the_shutdown_waits_for_running_jobs_then_hands_back_the_rest():
    core = make_core(capacity=4, batch_size=4)
    core.record_claim(core.reserve(), items := claimed(2))
    core.start(items[0])
    core.start(items[1])
    shutdown = services.shutdown(core)
    assert step(shutdown) == Wait(Signal.SLOT_FREED, pytest.approx(0.05, abs=0.01))
    core.release(items[0].job, succeeded(items[0]))
    assert isinstance(step(shutdown, True), Wait)  # one still runs
    core.release(items[1].job, succeeded(items[1]))
    assert step(shutdown, True) == Shutdown(ShutdownStep.STOP_RUNNERS)
    assert step(shutdown) == Shutdown(ShutdownStep.JOIN_COMPLETER)
    assert core.completer_closing
    assert step(shutdown) == Shutdown(ShutdownStep.JOIN_SERVICES)
    assert core.closing
    assert step(shutdown) == Shutdown(ShutdownStep.CLOSE_LANES)
    hand_back = step(shutdown)
    statement, params = next(hand_back.operation)
    assert statement is core.statements.hand_back
    assert params["keep"] == []
    deregister = step(shutdown, 0)
    assert next(deregister.operation)[0] is core.statements.deregister_worker
    done, _ = services.advance(shutdown, None, None)
    assert done


def test_a_forced_stop_does_not_wait_for_running_jobs():
    core = make_core()
    core.record_claim(core.reserve(), items := claimed(1))
    core.start(items[0])
    core.begin_stop(force=True)
    shutdown = services.shutdown(core)
    assert step(shutdown) == Shutdown(ShutdownStep.STOP_RUNNERS)
    assert items[0].job.cancel_reason == "shutdown"


def test_the_completer_leaves_outcomes_to_a_hungry_fetcher_for_a_moment():
    core = make_core()
    core.record_claim(core.reserve(), items := claimed(1))
    core.start(items[0])
    core.release(items[0].job, succeeded(items[0]))
    core.set_hungry(False, True)
    completer = services.completer(core)
    wait = step(completer)
    assert wait.signal is Signal.HANDOVER
    core.reserve()  # the fetcher takes them along
    effect = step(completer, True)
    assert effect == Wait(Signal.OUTCOME_READY, core.options.poll_interval)  # nothing left


def test_the_heartbeat_registers_a_new_incarnation_when_its_row_is_gone():
    core = make_core()
    old = core.worker_id
    heartbeat = services.heartbeat(core)
    step(heartbeat)  # wait for the interval
    beat = step(heartbeat, False)
    assert next(beat.operation)[1]["worker_id"] == old
    from pgq_sa._ops.worker import Heartbeat

    register = step(heartbeat, Heartbeat(alive=False, cancel=()))
    assert not core.registered
    assert core.worker_id != old
    statement, params = next(register.operation)
    assert statement is core.statements.register_worker
    assert params["worker_id"] == core.worker_id
    assert params["lease_timeout"] == core.options.lease_timeout
    step(heartbeat, True)  # the limits
    step(heartbeat, True)  # the durability level
    step(heartbeat, "durable")
    assert core.registered


def test_every_database_error_kind_is_retried_the_same_way():
    """Decided once for both workers: SQLAlchemy's errors, psycopg's own (the LISTEN connection)
    and socket errors (a refused connection, a statement deadline) are retried; others are not."""
    import psycopg

    from pgq_sa._deadlines import StatementDeadline

    for error in (
        OperationalError("SELECT", {}, Exception("gone")),
        psycopg.OperationalError("gone"),
        ConnectionRefusedError("refused"),
        StatementDeadline(1.0),
    ):
        core = make_core()
        fetcher = services.fetcher(core, 0)
        step(fetcher)
        assert isinstance(step(fetcher, error=error), Wait), error
    core = make_core()
    fetcher = services.fetcher(core, 0)
    step(fetcher)
    with pytest.raises(KeyError):
        services.advance(fetcher, None, KeyError("a bug is not retried"))


def test_the_scheduler_stops_with_the_worker():
    """Decided once: no periodic job is enqueued once the worker stops (it waits on STOPPING)."""
    core = make_core()

    @core.queue.periodic("* * * * *", name="tick")
    def tick(job):
        return None

    scheduler = services.scheduler(core)
    upsert = step(scheduler)
    assert next(upsert.operation)[0] is core.statements.upsert_schedules
    step(scheduler, True)  # the first round of fire times
    wait = step(scheduler, 0)
    assert wait.signal is Signal.STOPPING
    core.begin_stop()
    done, _ = services.advance(scheduler, True, None)
    assert done


def test_a_claim_that_fails_with_outcomes_gives_them_to_the_completer_and_claims_without():
    """One outcome whose row is locked elsewhere must not hold every claim behind it: a failed
    claim carrying outcomes hands them back and claims without outcomes until a write works."""
    core = make_core(capacity=4, batch_size=4)
    core.record_claim(core.reserve(), items := claimed(1))
    core.start(items[0])
    core.release(items[0].job, succeeded(items[0]))
    fetcher = services.fetcher(core, 0)
    call = step(fetcher)
    assert next(call.operation)[0] is core.statements.finish_and_claim_plain
    error = OperationalError("SELECT", {}, Exception("no answer"))
    call = step(fetcher, error=error)  # no backoff: the claim goes again, without outcomes
    assert next(call.operation)[0] is core.statements.claim
    assert [o.job_id for o in core.pending] == [items[0].job.id]
    assert core.piggyback_paused
    core.begin_stop()  # the claim without them is cut by a stop: they are not given back twice
    done, _ = services.advance(fetcher, None, error)
    if not done:
        done, _ = services.advance(fetcher, True, None)
    assert done
    assert [o.job_id for o in core.pending] == [items[0].job.id]
    core.written(core.take_batch(), Finished({items[0].job.id: "succeeded"}, (), None))
    assert not core.piggyback_paused


def test_one_worker_may_hold_an_old_and_a_new_attempt_of_one_job():
    """After a rescue, a worker may still run attempt 1 (its lease lost) when it claims attempt
    2 of the same job: the two are kept apart."""
    core = make_core()
    (first,) = claimed(1)
    second = Claimed(Job(first.job.id, "free", None, 2, 3, 0, "default", NOW), None, False)
    core.record_claim(core.reserve(), [first])
    core.start(first)
    core.record_claim(core.reserve(), [second])
    core.start(second)
    core.release(first.job, None)  # the old attempt is dropped
    assert core.held == {attempt_key(second.job.id, 2)}
    core.cancel([second.job.id])
    assert second.job.cancel_reason == "cancel"


def test_attempt_keys_tell_attempts_and_jobs_apart():
    biggest = 2**31 - 1  # attempt is a 32-bit column
    keys = {attempt_key(job, attempt) for job in (1, 2, 2**40) for attempt in (1, 2, biggest)}
    assert len(keys) == 9
    assert {job_id_of(key) for key in keys} == {1, 2, 2**40}


def test_a_release_wakes_a_fetcher_only_when_every_slot_was_taken():
    core = make_core(capacity=4, batch_size=4)
    core.record_claim(core.reserve(), items := claimed(2))  # two slots stay free
    core.runtime.signals.clear()
    core.start(items[0])
    core.release(items[0].job, succeeded(items[0]))
    assert Signal.SLOT_FREED not in core.runtime.signals  # nobody waits for a slot
    core.record_claim(core.reserve(), more := claimed(3))  # now every slot is taken
    fetcher = services.fetcher(core, 1)
    assert step(fetcher) == Wait(Signal.SLOT_FREED, core.options.poll_interval)
    core.start(more[0])
    core.release(more[0].job, succeeded(more[0]))
    assert Signal.SLOT_FREED in core.runtime.signals  # the waiting fetcher wakes
    assert core.reserve() is not None


def test_the_first_outcome_wakes_a_waiting_completer_and_later_ones_need_not():
    core = make_core()
    core.record_claim(core.reserve(), items := claimed(3))
    completer = services.completer(core)
    assert step(completer) == Wait(Signal.OUTCOME_READY, core.options.poll_interval)
    for item in items[:2]:
        core.start(item)
        core.release(item.job, succeeded(item))
        assert Signal.OUTCOME_READY in core.runtime.signals
    call = step(completer, True)  # it writes both
    assert isinstance(call, Call)
    assert len(core.pending) == 0
    step(completer, None)  # written; nothing pending: it clears and waits again
    assert Signal.OUTCOME_READY not in core.runtime.signals
    core.start(items[2])
    core.release(items[2].job, succeeded(items[2]))
    assert Signal.OUTCOME_READY in core.runtime.signals


def test_a_stopping_worker_hears_of_every_freed_slot():
    core = make_core(capacity=4, batch_size=4)
    core.record_claim(core.reserve(), items := claimed(2))
    core.begin_stop()
    shutdown = services.shutdown(core)
    assert step(shutdown) == Wait(Signal.SLOT_FREED, pytest.approx(0.05, abs=0.01))
    assert Signal.SLOT_FREED not in core.runtime.signals
    core.release(items[0].job, succeeded(items[0]))
    assert Signal.SLOT_FREED in core.runtime.signals
