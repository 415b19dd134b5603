"""Prometheus metrics for a queue (extra ``prometheus``): counters and histograms fed by the
queue's events, and queue-depth gauges read from the database at scrape time.

``PrometheusMetrics(queue, engine)`` subscribes to ``queue.events`` in this process, so counts
and durations cover the jobs this process enqueued and ran (a worker counts what it ran; sum
across processes in PromQL). The depth gauges come from the database and are the same
whichever process is scraped. ``serve(port)`` (or ``pgq-sa run --metrics-port``) exposes
``/metrics`` over HTTP.

Metrics (labels ``queue`` and ``task`` on all of them):

- ``pgq_sa_jobs_enqueued_total``, ``pgq_sa_jobs_started_total`` (counters);
- ``pgq_sa_job_outcomes_total{outcome}``: ``succeeded``, ``failed``, ``retried``,
  ``cancelled``, ``rescued`` (counter);
- ``pgq_sa_job_run_seconds`` (how long handlers ran) and ``pgq_sa_job_wait_seconds`` (from
  due to claimed) (histograms);
- ``pgq_sa_jobs{state}`` (live jobs, ``queued`` or ``running``), ``pgq_sa_jobs_due`` (queued
  and due), ``pgq_sa_oldest_due_job_age_seconds`` (gauges, from the database), and
  ``pgq_sa_database_up`` (0 when the depth query failed at the last scrape).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - tested with the module hidden
    raise ImportError(
        "pgq_sa.contrib.prometheus needs prometheus-client: pip install 'pgq-sa[prometheus]'"
    ) from error

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pgq_sa._events import Finished, JobEvent, Rescued, Started, Subscription
from pgq_sa._queue import Queue
from pgq_sa._schema import JobStatus

log = logging.getLogger("pgq_sa.contrib.prometheus")

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_LABELS = ("queue", "task")


class PrometheusMetrics:
    """The metrics of ``queue`` in ``registry``; depth gauges too when ``engine`` is given.

    ``close()`` unsubscribes and unregisters everything.
    """

    def __init__(
        self,
        queue: Queue,
        engine: Engine | None = None,
        *,
        registry: CollectorRegistry = REGISTRY,
        namespace: str = "pgq_sa",
        run_buckets: Sequence[float] = RUN_BUCKETS,
        wait_buckets: Sequence[float] = WAIT_BUCKETS,
    ) -> None:
        if not isinstance(queue, Queue):
            raise TypeError(f"queue must be a pgq_sa.Queue, got {type(queue).__name__}")
        if engine is not None and not isinstance(engine, Engine):
            raise TypeError(f"engine must be a sync sqlalchemy Engine, got {type(engine).__name__}")
        self.registry = registry
        self.enqueued = Counter(
            "jobs_enqueued",
            "Jobs created by enqueue in this process.",
            _LABELS,
            namespace=namespace,
            registry=None,
        )
        self.started = Counter(
            "jobs_started",
            "Handler runs started by workers of this process.",
            _LABELS,
            namespace=namespace,
            registry=None,
        )
        self.outcomes = Counter(
            "job_outcomes",
            "Ends of attempts seen by this process: succeeded, failed, retried, cancelled, "
            "rescued.",
            (*_LABELS, "outcome"),
            namespace=namespace,
            registry=None,
        )
        self.run_seconds = Histogram(
            "job_run_seconds",
            "How long handlers ran.",
            _LABELS,
            namespace=namespace,
            buckets=run_buckets,
            registry=None,
        )
        self.wait_seconds = Histogram(
            "job_wait_seconds",
            "How long jobs waited from due (max of run_at and creation) to claimed.",
            _LABELS,
            namespace=namespace,
            buckets=wait_buckets,
            registry=None,
        )
        self._collectors: list[Collector] = [
            self.enqueued,
            self.started,
            self.outcomes,
            self.run_seconds,
            self.wait_seconds,
        ]
        if engine is not None:
            self._collectors.append(DepthCollector(queue, engine, namespace))
        registered: list[Collector] = []
        try:
            for collector in self._collectors:
                registry.register(collector)
                registered.append(collector)
        except ValueError:
            for collector in registered:
                registry.unregister(collector)
            raise
        self._subscription: Subscription | None = queue.events.subscribe(self._observe)
        self._lock = threading.Lock()

    def _observe(self, event: JobEvent) -> None:
        kind, labels = event.kind, (event.queue, event.task)
        if kind == "enqueued":
            self.enqueued.labels(*labels).inc()
        elif isinstance(event, Started):
            self.started.labels(*labels).inc()
            if event.wait is not None:
                self.wait_seconds.labels(*labels).observe(event.wait)
        elif isinstance(event, (Finished, Rescued)):
            self.outcomes.labels(*labels, kind).inc()
            if isinstance(event, Finished):
                self.run_seconds.labels(*labels).observe(event.run)

    def close(self) -> None:
        """Stop counting and remove the metrics from the registry; idempotent."""
        with self._lock:
            subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        subscription.cancel()
        for collector in self._collectors:
            self.registry.unregister(collector)


class DepthCollector(Collector):
    """Queue-depth gauges, queried from the database at each scrape."""

    def __init__(self, queue: Queue, engine: Engine, namespace: str = "pgq_sa") -> None:
        self.queue, self.engine, self.namespace = queue, engine, namespace

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        n = self.namespace
        return (
            GaugeMetricFamily(f"{n}_jobs", "Live jobs by state.", labels=(*_LABELS, "state")),
            GaugeMetricFamily(f"{n}_jobs_due", "Queued jobs that are due.", labels=_LABELS),
            GaugeMetricFamily(
                f"{n}_oldest_due_job_age_seconds",
                "How long the oldest due queued job has waited.",
                labels=_LABELS,
            ),
            GaugeMetricFamily(f"{n}_database_up", "1 if the depth query succeeded."),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()  # without this, registering would query the database

    def collect(self) -> Iterator[Metric]:
        jobs, due, age, up = self._families()
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(self.queue.statements.live_job_counts).all()
        except (SQLAlchemyError, psycopg.Error, OSError) as error:
            log.warning("queue depth query failed: %s", error.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        for row in rows:
            labels = [row.queue, row.task]
            state = JobStatus(row.state).value
            jobs.add_metric([*labels, state], row.jobs)
            if state == "queued":
                due.add_metric(labels, row.due)
                age.add_metric(labels, float(row.oldest_due_age or 0))
        up.add_metric([], 1)
        yield from (jobs, due, age, up)


def serve(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve ``/metrics`` of ``registry`` on ``addr:port`` from a daemon thread; returns the
    server (``server.server_port`` is the port, ``server.shutdown()`` stops it)."""
    server, _thread = _start_http_server(port, addr, registry)
    return server


__all__ = ["DepthCollector", "PrometheusMetrics", "serve"]
