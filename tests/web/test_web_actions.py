"""Every action of the dashboard: done through the queue's own operations, only by POST, only
same-origin with the form's token, never in read-only mode (on the server, whatever the page)."""

from __future__ import annotations

import re

import pytest
from helpers import snapshot
from web_helpers import add_schedule, fail_jobs, message, post, seed

from pgq_sa import JobStatus, Queue


def test_cancel_and_retry_a_job(engine, client):
    queue = Queue()
    job_id = queue.enqueue(engine, "a")
    response = post(client, f"/jobs/{job_id}/cancel", {"next": f"/jobs/{job_id}"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{job_id}?done=cancelled"
    assert queue.get(engine, job_id).status is JobStatus.cancelled
    assert "Cancellation requested." in client.get(response.headers["location"]).text

    response = post(client, f"/jobs/{job_id}/retry", {"next": f"/jobs/{job_id}"})
    assert response.headers["location"] == f"/jobs/{job_id}?done=retried"
    assert queue.get(engine, job_id).status is JobStatus.queued

    again = post(client, f"/jobs/{job_id}/retry", {"next": f"/jobs/{job_id}"})
    assert again.headers["location"] == f"/jobs/{job_id}?done=not-retried"


def test_bulk_cancel_and_retry_of_the_selected_jobs(engine, client):
    queue = Queue()
    ids = [queue.enqueue(engine, "a") for _ in range(4)]
    response = post(
        client, "/jobs/bulk", {"action": "cancel", "job": ids[:3], "next": "/jobs?status=queued"}
    )
    assert response.headers["location"] == "/jobs?status=queued&done=cancelled&n=3"
    states = [queue.get(engine, i).status for i in ids]
    assert states == [JobStatus.cancelled] * 3 + [JobStatus.queued]
    response = post(client, "/jobs/bulk", {"action": "retry", "job": ids})
    assert "n=3" in response.headers["location"]
    assert all(queue.get(engine, i).status is JobStatus.queued for i in ids)


def test_retry_all_of_a_failure_group_takes_only_that_group(engine, client):
    queue = Queue()
    timeouts = [queue.enqueue(engine, "charge") for _ in range(3)]
    other = [queue.enqueue(engine, "charge") for _ in range(2)]
    fail_jobs(engine, timeouts, "TimeoutError")
    fail_jobs(engine, other, "ValueError")
    response = post(
        client,
        "/failures/retry",
        {"queue": "default", "task": "charge", "error_type": "TimeoutError", "next": "/failures"},
        page="/failures",
    )
    assert response.headers["location"] == "/failures?done=retried&n=3"
    assert [queue.get(engine, i).status for i in timeouts] == [JobStatus.queued] * 3
    assert [queue.get(engine, i).status for i in other] == [JobStatus.failed] * 2


def test_pause_and_resume_a_queue(engine, client):
    queue = Queue()
    queue.enqueue(engine, "a", queue="media")
    response = post(client, "/queues/pause", {"queue": "media", "paused": "true"}, page="/queues")
    assert response.status_code == 303
    assert re.search(r'data-queue="media".*?paused', client.get("/queues").text, re.S)
    post(client, "/queues/pause", {"queue": "media", "paused": "false"}, page="/queues")
    assert re.search(r'data-queue="media".*?active', client.get("/queues").text, re.S)


def test_disable_and_enable_a_schedule(engine, client):
    add_schedule(engine, "nightly")
    post(
        client, "/schedules/switch", {"schedule": "nightly", "enabled": "false"}, page="/schedules"
    )
    assert re.search(
        r'data-schedule="nightly".*?disabled.*?Enable', client.get("/schedules").text, re.S
    )
    post(client, "/schedules/switch", {"schedule": "nightly", "enabled": "true"}, page="/schedules")
    assert re.search(
        r'data-schedule="nightly".*?enabled.*?Disable', client.get("/schedules").text, re.S
    )
    missing = post(
        client, "/schedules/switch", {"schedule": "nope", "enabled": "true"}, page="/schedules"
    )
    assert missing.headers["location"].endswith("done=no-schedule")


@pytest.mark.parametrize(
    ("headers", "token", "fragment"),
    [
        ({"origin": "http://evil.example"}, True, "a request from 'evil.example'"),
        ({"referer": "http://evil.example/page"}, True, "a request from 'evil.example'"),
        ({}, True, "no Origin or Referer"),
        ({"origin": "http://testserver"}, False, "security token is missing or stale"),
        ({"origin": "null"}, True, "no Origin or Referer"),
    ],
)
def test_cross_site_posts_are_refused_and_change_nothing(engine, client, headers, token, fragment):
    job_id = Queue().enqueue(engine, "a")
    before = snapshot(engine)
    page = client.get("/jobs").text
    data = (
        {"csrf": re.search(r'name="csrf" value="([^"]+)"', page).group(1)}
        if token
        else {"next": "/"}
    )
    response = client.post(f"/jobs/{job_id}/cancel", data=data, headers=headers)
    assert response.status_code == 403
    assert fragment in message(response.text).replace("&#39;", "'")
    assert snapshot(engine) == before


def test_a_token_from_another_browser_is_refused(engine, make_client):
    job_id = Queue().enqueue(engine, "a")
    alice, mallory = make_client(), make_client()
    stolen = re.search(r'name="csrf" value="([^"]+)"', mallory.get("/jobs").text).group(1)
    alice.get("/jobs")  # alice has a cookie of her own
    response = alice.post(
        f"/jobs/{job_id}/cancel", data={"csrf": stolen}, headers={"origin": "http://testserver"}
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "path", ["/jobs/1/cancel", "/jobs/1/retry", "/jobs/bulk", "/queues/pause", "/failures/retry"]
)
def test_actions_are_post_only(client, path):
    assert client.get(path).status_code in (400, 405)
    assert client.put(path).status_code == 405


def test_read_only_refuses_every_action_on_the_server(engine, make_client):
    seeded = seed(engine)
    client = make_client(read_only=True)
    before = snapshot(engine)
    page = client.get(f"/jobs/{seeded['failed'][0]}").text
    assert "Read-only dashboard" in page
    assert "<form" not in page.split("<main", 1)[1]  # not one action form on the page
    assert ">Pause<" not in client.get("/queues").text
    assert ">Retry all<" not in client.get("/failures").text
    attempts = [
        (f"/jobs/{seeded['failed'][0]}/retry", {}),
        (f"/jobs/{seeded['queued'][0]}/cancel", {}),
        ("/jobs/bulk", {"action": "cancel", "job": seeded["queued"]}),
        ("/queues/pause", {"queue": "default", "paused": "true"}),
        ("/failures/retry", {"queue": "billing", "task": "payments.charge", "error_type": ""}),
        ("/schedules/switch", {"schedule": "reports.nightly", "enabled": "false"}),
    ]
    for path, data in attempts:
        response = post(client, path, data)
        assert response.status_code == 403, path
        assert "read-only" in message(response.text), path
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"action": "explode", "job": ["1"]}, "action must be cancel or retry"),
        ({"action": "cancel"}, "select at least one job first"),
        ({"action": "cancel", "job": ["x"]}, "job id must be a whole number"),
        ({"action": "cancel", "job": [str(n) for n in range(1, 502)]}, "at most 500 jobs"),
    ],
)
def test_bad_bulk_forms_get_a_clear_400(engine, client, data, fragment):
    before = snapshot(engine)
    response = post(client, "/jobs/bulk", data)
    assert response.status_code == 400
    assert fragment in message(response.text)
    assert snapshot(engine) == before


def test_bad_forms_are_refused_before_any_sql(engine, client):
    before = snapshot(engine)
    for path, data, fragment in [
        ("/queues/pause", {"queue": "", "paused": "true"}, "names no queue"),
        ("/queues/pause", {"queue": "q", "paused": "maybe"}, "paused must be true or false"),
        ("/schedules/switch", {"schedule": "s", "enabled": "1"}, "enabled must be true or false"),
        ("/failures/retry", {"queue": "q"}, "names no queue or no task"),
        ("/jobs/search", {"dedupe_key": ""}, "type a dedupe key"),
        ("/jobs/search", {"dedupe_key": "k" * 2000}, "dedupe key:"),
    ]:
        response = post(client, path, data)
        assert response.status_code == 400, path
        assert fragment in message(response.text), path
    response = client.post(
        "/jobs/1/cancel",
        content=b"{}",
        headers={"content-type": "application/json", "origin": "http://testserver"},
    )
    assert response.status_code == 400
    assert snapshot(engine) == before


def test_the_redirect_never_leaves_the_dashboard(engine, client):
    job_id = Queue().enqueue(engine, "a")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil", "javascript:alert(1)"):
        response = post(client, f"/jobs/{job_id}/retry", {"next": target})
        assert response.headers["location"].startswith("/?done="), target
