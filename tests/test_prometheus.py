"""Prometheus metrics: a real worker, scraped over HTTP; the `run --metrics-port` flag."""

from __future__ import annotations

import importlib
import os
import queue as queues
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.request import urlopen

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from worker_helpers import start_worker

from pgq_sa import JobStatus, Queue
from pgq_sa._cli import cli
from pgq_sa._config import make_engine
from pgq_sa.contrib.prometheus import PrometheusMetrics, serve

pytestmark = [pytest.mark.timeout(120)]

APPS = str(Path(__file__).parent / "apps")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_metrics_of_a_real_worker_over_http(engine, database_url):
    queue = Queue()
    holding, release = threading.Event(), threading.Event()

    @queue.task("ok")
    def ok(job):
        return None

    @queue.task("bad", max_attempts=1)
    def bad(job):
        raise RuntimeError("broken")

    @queue.task("hold")
    def hold(job):
        holding.set()
        assert release.wait(60)

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(queue, engine, registry=registry)
    server = serve(0, "127.0.0.1", registry)
    port = server.server_port
    try:
        ids = [queue.enqueue(engine, "ok") for _ in range(3)]
        ids += [queue.enqueue(engine, "bad"), queue.enqueue(engine, "hold")]
        queue.enqueue(engine, "nobody.runs.this", queue="other")  # queued and due
        queue.enqueue(engine, "nobody.runs.this", queue="other", delay=3600)  # not due yet
        worker = start_worker("threads", queue, database_url, until_empty=True)
        try:
            assert holding.wait(60)
            during = _scrape(port)
        finally:
            release.set()
            worker.join(60)
        after = _scrape(port)
    finally:
        server.shutdown()
        server.server_close()
        metrics.close()
    assert [queue.get(engine, i).status for i in ids] == [JobStatus.succeeded] * 3 + [
        JobStatus.failed,
        JobStatus.succeeded,
    ]

    default_ok = _labels(queue="default", task="ok")
    other = _labels(queue="other", task="nobody.runs.this")
    assert during[("pgq_sa_jobs", _labels(queue="default", task="hold", state="running"))] == 1
    assert during[("pgq_sa_database_up", ())] == 1
    assert after[("pgq_sa_jobs_enqueued_total", default_ok)] == 3
    assert after[("pgq_sa_jobs_enqueued_total", _labels(queue="default", task="bad"))] == 1
    assert after[("pgq_sa_jobs_enqueued_total", other)] == 2
    assert after[("pgq_sa_jobs_started_total", default_ok)] == 3
    ok_succeeded = _labels(queue="default", task="ok", outcome="succeeded")
    assert after[("pgq_sa_job_outcomes_total", ok_succeeded)] == 3
    bad_failed = _labels(queue="default", task="bad", outcome="failed")
    assert after[("pgq_sa_job_outcomes_total", bad_failed)] == 1
    ok_failed = _labels(queue="default", task="ok", outcome="failed")
    assert ("pgq_sa_job_outcomes_total", ok_failed) not in after
    assert after[("pgq_sa_job_run_seconds_count", default_ok)] == 3
    assert (
        after[("pgq_sa_job_run_seconds_bucket", _labels(le="+Inf", queue="default", task="ok"))]
        == 3
    )
    assert after[("pgq_sa_job_wait_seconds_count", default_ok)] == 3
    assert 0 <= after[("pgq_sa_job_wait_seconds_sum", default_ok)] < 60
    # the depth gauges, from the database: only the jobs nobody runs are left
    other_queued = _labels(queue="other", task="nobody.runs.this", state="queued")
    assert after[("pgq_sa_jobs", other_queued)] == 2
    assert after[("pgq_sa_jobs_due", other)] == 1
    assert 0 <= after[("pgq_sa_oldest_due_job_age_seconds", other)] < 60
    assert [key for key in after if key[0] == "pgq_sa_jobs"] == [("pgq_sa_jobs", other_queued)]
    assert after[("pgq_sa_database_up", ())] == 1


def test_depth_gauges_report_an_unreachable_database(caplog):
    queue = Queue()
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(queue, engine, registry=registry)
    try:
        text = generate_latest(registry).decode()
    finally:
        metrics.close()
        engine.dispose()
    assert "pgq_sa_database_up 0.0" in text
    assert "queue depth query failed" in caplog.text
    assert generate_latest(registry) == b""  # close() unregistered everything
    with pytest.raises(TypeError, match="Engine"):
        PrometheusMetrics(queue, "postgresql://x/y", registry=registry)  # type: ignore[arg-type]


def test_run_serves_metrics(database_url, engine):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgq_sa",
            "--database-url",
            database_url.render_as_string(False),
            "run",
            "sample_app:queue",
            "--metrics-port",
            "0",
            "--metrics-host",
            "127.0.0.1",
            "--poll-interval",
            "0.1",
        ],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": APPS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queues.SimpleQueue[str] = queues.SimpleQueue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr])
    reader.start()
    try:
        port = None
        while port is None:
            found = re.search(
                r"metrics on http://127\.0\.0\.1:(\d+)/metrics", lines.get(timeout=60)
            )
            port = int(found.group(1)) if found else None
        queue = Queue()
        ids = [queue.enqueue(engine, "sample.sleep", {"seconds": 0}) for _ in range(2)]
        for job_id in ids:
            assert queue.wait(engine, job_id, timeout=60).status is JobStatus.succeeded
        scraped = _scrape(port)
        succeeded = _labels(queue="default", task="sample.sleep", outcome="succeeded")
        assert scraped[("pgq_sa_job_outcomes_total", succeeded)] == 2
        assert scraped[("pgq_sa_database_up", ())] == 1
        assert any(name.startswith("process_") for name, _ in scraped)  # the default registry
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        reader.join(10)
        process.stderr.close()


def test_missing_extras_give_a_clear_error(monkeypatch, database_url):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "pgq_sa.contrib.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'pgq-sa\[prometheus\]'"):
        importlib.import_module("pgq_sa.contrib.prometheus")
    monkeypatch.syspath_prepend(APPS)
    result = CliRunner().invoke(
        cli,
        [
            "--database-url",
            database_url.render_as_string(False),
            "run",
            "sample_app:queue",
            "--metrics-port",
            "0",
        ],
    )
    assert result.exit_code == 1
    assert "pgq-sa[prometheus]" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "pgq_sa.contrib.otel", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'pgq-sa\[otel\]'"):
        importlib.import_module("pgq_sa.contrib.otel")
