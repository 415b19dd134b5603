"""A claimed row becomes the job a handler sees: every column lands in its own field.

``_claimed`` unpacks rows by position (it runs for every claimed job); this test builds a row in
the ``ClaimedRow`` shape with a distinct value per column, so a column order that drifts from the
shape fails here instead of handing handlers swapped fields.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pgq_sa._ops.worker import _claimed
from pgq_sa._sql.shared import ClaimedRow

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_every_claimed_column_lands_in_its_own_field():
    row = ClaimedRow(
        id=11,
        task="task",
        payload={"p": 1},
        attempt=2,
        max_attempts=5,
        priority=-3,
        queue="q",
        created_at=T0,
        timeout=7.5,
        scheduled_at=T0 + timedelta(seconds=1),
        cancel_requested=True,
        run_at=T0 + timedelta(seconds=2),
        started_at=T0 + timedelta(seconds=3),
        meta={"trace": "x"},
        workflow_id=99,
    )
    (item,) = _claimed([tuple(row)])
    job = item.job
    assert (job.id, job.task, job.payload, job.attempt) == (11, "task", {"p": 1}, 2)
    assert (job.max_attempts, job.priority, job.queue) == (5, -3, "q")
    assert job.created_at == row.created_at
    assert job.scheduled_at == row.scheduled_at
    assert job.run_at == row.run_at
    assert job.started_at == row.started_at
    assert job.meta == {"trace": "x"}
    assert job.workflow_id == 99  # its upstream and dependents come from step_context
    assert (item.timeout, item.cancel_requested) == (7.5, True)


def test_a_job_outside_workflows_shares_one_empty_upstream():
    row = ClaimedRow(1, "t", None, 1, 3, 0, "q", T0, None, None, False, T0, T0, None, None)
    first, second = _claimed([tuple(row), tuple(row)])
    assert first.job.workflow_id is None
    assert dict(first.job.upstream) == {}
    assert first.job.upstream is second.job.upstream  # no dict built per job
