"""Every SQL statement pgq_sa runs, built once per queue schema as SQLAlchemy Core executables.

No I/O here: builders take the tables and return statements whose inputs are all bind parameters,
so SQLAlchemy's compiled cache and the drivers' prepared statements are reused for every call.
Producers, workers, the CLI and the dashboard all execute these same objects; nothing else in the
package writes SQL for the queue's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.sql.expression import Executable

from pgq_sa._schema import QueueTables
from pgq_sa._sql import (
    claim,
    finish,
    limits,
    maintenance,
    producer,
    schedules,
    settings,
    workers,
)
from pgq_sa._sql.dashboard import DashboardStatements
from pgq_sa._sql.monitoring import MonitoringStatements
from pgq_sa._sql.workflows import WorkflowStatements


@dataclass(frozen=True)
class Statements:
    """The statements of one queue schema."""

    tables: QueueTables
    enqueue: Executable
    live_ids_by_dedupe_key: Executable
    get_job: Executable
    mark_awaited: Executable
    cancel_queued: Executable
    cancel_running: Executable
    retry_finished: Executable
    set_paused: Executable
    list_queues: Executable
    live_job_counts: Executable
    register_worker: Executable
    heartbeat: Executable
    deregister_worker: Executable
    claim: Executable
    claim_in_queues: Executable
    finish: Executable
    finish_and_claim: Executable
    finish_and_claim_in_queues: Executable
    # The same without the workflow unblocking: for outcomes of jobs outside any workflow.
    finish_plain: Executable
    finish_and_claim_plain: Executable
    finish_and_claim_in_queues_plain: Executable
    hand_back: Executable
    next_run_at: Executable
    rescue: Executable
    prune_succeeded: Executable
    prune_failed: Executable
    upsert_limits: Executable
    lock_limits: Executable
    claim_limited: Executable
    claim_limited_in_queues: Executable
    upsert_schedules: Executable
    touch_schedules: Executable
    fire_schedule: Executable
    list_schedules: Executable
    set_schedule_enabled: Executable
    read_setting: Executable
    write_setting: Executable
    physical_replicas: Executable
    table_persistence: Executable
    monitoring: MonitoringStatements
    dashboard: DashboardStatements
    workflows: WorkflowStatements

    @classmethod
    def build(cls, tables: QueueTables) -> Statements:
        return cls(
            tables=tables,
            enqueue=producer.enqueue(tables),
            live_ids_by_dedupe_key=producer.live_ids_by_dedupe_key(tables),
            get_job=producer.get_job(tables),
            mark_awaited=producer.mark_awaited(tables),
            cancel_queued=producer.cancel_queued(tables),
            cancel_running=producer.cancel_running(tables),
            retry_finished=producer.retry_finished(tables),
            set_paused=producer.set_paused(tables),
            list_queues=producer.list_queues(tables),
            live_job_counts=producer.live_job_counts(tables),
            register_worker=workers.register_worker(tables),
            heartbeat=workers.heartbeat(tables),
            deregister_worker=workers.deregister_worker(tables),
            claim=claim.claim(tables, in_queues=False),
            claim_in_queues=claim.claim(tables, in_queues=True),
            finish=finish.finish(tables),
            finish_and_claim=finish.finish_and_claim(tables, in_queues=False),
            finish_and_claim_in_queues=finish.finish_and_claim(tables, in_queues=True),
            finish_plain=finish.finish(tables, workflows=False),
            finish_and_claim_plain=finish.finish_and_claim(
                tables, in_queues=False, workflows=False
            ),
            finish_and_claim_in_queues_plain=finish.finish_and_claim(
                tables, in_queues=True, workflows=False
            ),
            hand_back=maintenance.hand_back(tables),
            next_run_at=claim.next_run_at(tables),
            rescue=maintenance.rescue(tables),
            prune_succeeded=maintenance.prune(tables, "succeeded"),
            prune_failed=maintenance.prune(tables, "failed", "cancelled"),
            upsert_limits=limits.upsert_limits(tables),
            lock_limits=limits.lock_limits(tables),
            claim_limited=limits.claim_limited(tables, in_queues=False),
            claim_limited_in_queues=limits.claim_limited(tables, in_queues=True),
            upsert_schedules=schedules.upsert_schedules(tables),
            touch_schedules=schedules.touch_schedules(tables),
            fire_schedule=schedules.fire_schedule(tables),
            list_schedules=schedules.list_schedules(tables),
            set_schedule_enabled=schedules.set_schedule_enabled(tables),
            read_setting=settings.read_setting(tables),
            write_setting=settings.write_setting(tables),
            physical_replicas=settings.physical_replicas(),
            table_persistence=settings.table_persistence(tables),
            monitoring=MonitoringStatements.build(tables),
            dashboard=DashboardStatements.build(tables),
            workflows=WorkflowStatements.build(tables),
        )

    def finish_for(self, *, plain: bool) -> Executable:
        """The finish statement for a batch; ``plain``: no outcome is of a workflow step."""
        return self.finish_plain if plain else self.finish

    def finish_and_claim_for(self, *, in_queues: bool, plain: bool) -> Executable:
        """The finish-and-claim statement for a batch, claiming in named queues or any."""
        if in_queues:
            return (
                self.finish_and_claim_in_queues_plain if plain else self.finish_and_claim_in_queues
            )
        return self.finish_and_claim_plain if plain else self.finish_and_claim
