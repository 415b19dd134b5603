"""Live updates over a real server: the event stream announces a change when the queue NOTIFYs
(an enqueue) and when the polled fingerprint moves (a finish, which sends no NOTIFY)."""

from __future__ import annotations

import time

import httpx
import pytest
from web_helpers import succeed_jobs

from pgq_sa import Queue
from pgq_sa.web._app import create_app
from pgq_sa.web._server import BackgroundServer


@pytest.fixture
def served(engine):
    app = create_app(engine, auth=None)
    server = BackgroundServer(app)
    url = server.start()
    yield url, app
    server.stop()


def _events(response, until: float):
    """The (event, data) pairs of an SSE stream, until the deadline."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            yield event, line[6:]
            event = None
        if time.monotonic() > until:
            return


def _next_change(stream, what: str, timeout: float = 15.0) -> str:
    for event, data in stream:
        if event == "change":
            return data
    raise AssertionError(f"no change event after {what}")


def test_the_stream_announces_an_enqueue_and_an_unannounced_finish(engine, served):
    url, app = served
    queue = Queue()
    with httpx.Client(timeout=30) as client, client.stream("GET", url + "events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = _events(response, time.monotonic() + 40)
        assert next(stream) == ("hello", "ok")
        watcher = app.state.site.watcher
        deadline = time.monotonic() + 10
        while watcher.mode == "starting" and time.monotonic() < deadline:  # first fingerprint
            time.sleep(0.05)
        assert watcher.mode == "listen"
        job_id = queue.enqueue(engine, "a")
        first = _next_change(stream, "an enqueue")
        succeed_jobs(engine, [job_id])  # no NOTIFY: the poller's fingerprint sees it
        second = _next_change(stream, "a finish")
        assert int(second) > int(first)


def test_pages_load_the_live_script_and_name_the_stream(served):
    url, _ = served
    page = httpx.get(url + "jobs").text
    assert 'data-events="/events"' in page
    assert "data-live-page" in page
    script = httpx.get(url + "static/dashboard.js")
    assert script.status_code == 200
    assert "EventSource" in script.text
