"""OpenTelemetry tracing for a queue (extra ``otel``): a producer span per enqueued job, whose
context travels in the job's ``meta``, and a consumer span around each handler run, child of it.

``instrument(queue)`` attaches three hooks to ``queue.events``:

- a meta provider: at enqueue (before any SQL), a ``send <task>`` span of kind PRODUCER is
  started as a child of the caller's current span, its context injected with the global
  propagator (W3C ``traceparent`` by default) into ``meta["otel"]``, and ended at once: it marks
  the moment the job was created and does not cover the insert statement or the commit;
- a handler scope: each run of the handler happens inside a ``process <task>`` span of kind
  CONSUMER whose parent is the carried context (a new trace when the job carries none, e.g. a
  job of a periodic schedule), made current so spans the handler opens are its children;
- an outcome subscriber that records the outcome on that span (``pgq_sa.outcome``; for failed and
  retried attempts an ERROR status with the exception's type, never its message or a payload).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as error:  # pragma: no cover - tested with the module hidden
    raise ImportError(
        "pgq_sa.contrib.otel needs opentelemetry-api: pip install 'pgq-sa[otel]'"
    ) from error

from pgq_sa._events import Failed, JobEvent, Retried, Subscription
from pgq_sa._job import Job
from pgq_sa._queue import Queue

META_KEY = "otel"
SYSTEM = "pgq_sa"

# The consumer span of the handler run in progress on this thread or task, with its job id.
_consuming: contextvars.ContextVar[tuple[int, Span] | None] = contextvars.ContextVar(
    "pgq_sa_consuming", default=None
)


class Tracing:
    """The tracing hooks of one queue; ``close()`` detaches them."""

    def __init__(
        self,
        queue: Queue,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        if not isinstance(queue, Queue):
            raise TypeError(f"queue must be a pgq_sa.Queue, got {type(queue).__name__}")
        from pgq_sa import __version__

        self.tracer = trace.get_tracer("pgq_sa", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator
        self._lock = threading.Lock()
        events = queue.events
        self._subscriptions: list[Subscription] = [
            events.add_meta_provider(self._produce),
            events.add_handler_scope(self._consume),
            events.subscribe(self._outcome, kinds=("succeeded", "failed", "retried", "cancelled")),
        ]

    def close(self) -> None:
        """Detach the hooks; idempotent."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.cancel()

    def _textmap(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    def _produce(self, task: str, queue: str) -> dict[str, Any] | None:
        span = self.tracer.start_span(
            f"send {task}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.destination.name": queue,
                "pgq_sa.task": task,
            },
        )
        try:
            carrier: dict[str, str] = {}
            self._textmap().inject(carrier, context=trace.set_span_in_context(span))
        finally:
            span.end()
        return {META_KEY: carrier} if carrier else None

    def _consume(self, job: Job) -> AbstractContextManager[None]:
        return self._consumer_span(job)

    @contextmanager
    def _consumer_span(self, job: Job) -> Iterator[None]:
        carried = (job.meta or {}).get(META_KEY)
        parent = self._textmap().extract(carried) if isinstance(carried, dict) else None
        with self.tracer.start_as_current_span(
            f"process {job.task}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": str(job.id),
                "pgq_sa.task": job.task,
                "pgq_sa.attempt": job.attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = _consuming.set((job.id, span))
            try:
                yield
            finally:
                _consuming.reset(token)

    def _outcome(self, event: JobEvent) -> None:
        current = _consuming.get()
        if current is None or current[0] != event.job_id:
            return
        span = current[1]
        span.set_attribute("pgq_sa.outcome", event.kind)
        if isinstance(event, (Failed, Retried)):
            span.set_attribute("error.type", event.error_type)
            span.set_status(Status(StatusCode.ERROR, event.error_type))


def instrument(
    queue: Queue,
    *,
    tracer_provider: TracerProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> Tracing:
    """Trace ``queue``'s jobs from enqueue to handler; the global tracer provider and
    propagator unless given."""
    return Tracing(queue, tracer_provider=tracer_provider, propagator=propagator)


__all__ = ["META_KEY", "Tracing", "instrument"]
