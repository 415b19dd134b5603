"""OpenTelemetry: the trace context travels from enqueue, through the job's meta, to the handler."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from worker_helpers import KINDS, start_worker

from pgq_sa import JobStatus, Queue
from pgq_sa.contrib.otel import META_KEY, instrument

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.parametrize("kind", KINDS)
def test_consumer_span_is_a_child_of_the_producer_span(kind, engine, database_url):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    queue = Queue()
    seen_meta = {}

    @queue.task("sync.job", max_attempts=1)
    def sync_job(job):
        seen_meta[job.id] = job.meta
        with tracer.start_as_current_span("inside sync"):
            pass
        if job.payload["fail"]:
            raise KeyError("nope")

    @queue.task("async.job")
    async def async_job(job):
        seen_meta[job.id] = job.meta
        with tracer.start_as_current_span("inside async"):
            pass

    tracing = instrument(queue, tracer_provider=provider)
    with tracer.start_as_current_span("request") as request:
        ids = {
            "sync": queue.enqueue(engine, "sync.job", {"fail": False}),
            "async": queue.enqueue(engine, "async.job"),
            "failing": queue.enqueue(engine, "sync.job", {"fail": True}),
        }
    untraced = queue.enqueue(engine, "async.job")  # no current span: a trace of its own
    worker = start_worker(kind, queue, database_url, until_empty=True)
    worker.join(60)
    tracing.close()
    assert queue.get(engine, ids["failing"]).status is JobStatus.failed
    assert queue.get(engine, untraced).status is JobStatus.succeeded

    spans = exporter.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    producers = [s for s in spans if s.kind is SpanKind.PRODUCER]
    consumers = {
        s.attributes["messaging.message.id"]: s for s in spans if s.kind is SpanKind.CONSUMER
    }
    assert len(producers) == 4
    assert len(consumers) == 4
    for name, job_id in ids.items():
        consumer = consumers[str(job_id)]
        carried = seen_meta[job_id][META_KEY]["traceparent"]
        producer = next(p for p in producers if format(p.context.span_id, "016x") in carried)
        assert producer.parent.span_id == request.get_span_context().span_id
        assert producer.context.trace_id == trace_id
        assert consumer.context.trace_id == trace_id
        assert consumer.parent.span_id == producer.context.span_id, name
        assert consumer.attributes["pgq_sa.attempt"] == 1
        inner = [s for s in spans if s.name.startswith("inside") and s.parent is not None]
        assert any(s.parent.span_id == consumer.context.span_id for s in inner), name
    assert consumers[str(ids["sync"])].name == "process sync.job"
    assert consumers[str(ids["sync"])].attributes["pgq_sa.outcome"] == "succeeded"
    failing = consumers[str(ids["failing"])]
    assert failing.attributes["pgq_sa.outcome"] == "failed"
    assert failing.status.status_code is StatusCode.ERROR
    assert failing.attributes["error.type"] == "KeyError"
    lone = consumers[str(untraced)]
    assert lone.context.trace_id != trace_id
    assert lone.parent is not None  # its own producer span, a root
    assert lone.parent.span_id in {p.context.span_id for p in producers if p.parent is None}
