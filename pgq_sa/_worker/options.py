"""Worker settings shared by both workers, validated before anything connects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from pgq_sa import _validation as validation
from pgq_sa._deadlines import DEFAULT_STATEMENT_TIMEOUT
from pgq_sa._queue import Queue
from pgq_sa._tasks import TaskDefinition


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker claims, heartbeats and shuts down."""

    capacity: int
    batch_size: int
    queues: tuple[str, ...] | None
    heartbeat_interval: float
    lease_timeout: float
    poll_interval: float
    shutdown_timeout: float
    tasks: dict[str, TaskDefinition]
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT

    @property
    def heartbeat_deadline(self) -> float:
        """A heartbeat's own deadline: short enough that a hung one is retried well within the
        worker's lease."""
        return min(self.statement_timeout, self.lease_timeout / 3)

    # Derived from the tasks once, at the first use (when the worker starts): the claim reads
    # them on every round trip.
    @cached_property
    def task_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.tasks))

    @cached_property
    def limited_tasks(self) -> tuple[str, ...]:
        """Tasks with a cluster-wide concurrency or rate limit: claimed under their limit rows."""
        return tuple(sorted(n for n, d in self.tasks.items() if d.concurrency or d.rate_limit))

    @cached_property
    def free_tasks(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.tasks) - set(self.limited_tasks)))

    @cached_property
    def pacing(self) -> float | None:
        """How soon to claim again after a rate-limited claim took jobs: the tightest spacing."""
        spacings = [
            d.rate_limit.period / d.rate_limit.count for d in self.tasks.values() if d.rate_limit
        ]
        return min(spacings) if spacings else None


def worker_options(
    queue: Queue,
    *,
    capacity: object,
    capacity_name: str,
    batch_size: object,
    queues: Iterable[str] | None,
    heartbeat_interval: object,
    lease_timeout: object,
    poll_interval: object,
    shutdown_timeout: object,
    statement_timeout: object = DEFAULT_STATEMENT_TIMEOUT,
) -> WorkerOptions:
    if not isinstance(queue, Queue):
        raise TypeError(f"the first argument must be a pgq_sa.Queue, got {type(queue).__name__}")
    if not queue.tasks:
        raise ValueError("the queue has no tasks: register handlers with @queue.task(...) first")
    size = validation._integer(capacity, capacity_name)
    if size < 1:
        raise ValueError(f"{capacity_name} must be 1 or more, got {size}")
    if batch_size is None:
        batch = min(size, 100)
    else:
        batch = validation._integer(batch_size, "batch_size")
        if batch < 1:
            raise ValueError(f"batch_size must be 1 or more, got {batch}")
    names: tuple[str, ...] | None = None
    if queues is not None:
        if isinstance(queues, str):
            raise TypeError("queues must be a list of queue names, not a str")
        names = tuple(validation.queue_name(name) for name in queues)
        if not names:
            raise ValueError("queues must name at least one queue (or be None for all queues)")
    heartbeat = validation.seconds(heartbeat_interval, "heartbeat_interval", allow_zero=False)
    lease = validation.seconds(lease_timeout, "lease_timeout", allow_zero=False)
    if lease < 2 * heartbeat:
        raise ValueError(
            f"lease_timeout ({lease:g}s) must be at least twice heartbeat_interval "
            f"({heartbeat:g}s), or live workers would look dead"
        )
    return WorkerOptions(
        capacity=size,
        batch_size=batch,
        queues=names,
        heartbeat_interval=heartbeat,
        lease_timeout=lease,
        poll_interval=validation.seconds(poll_interval, "poll_interval", allow_zero=False),
        shutdown_timeout=validation.seconds(shutdown_timeout, "shutdown_timeout"),
        tasks=queue.tasks,
        statement_timeout=validation.seconds(
            statement_timeout, "statement_timeout", allow_zero=False
        ),
    )
