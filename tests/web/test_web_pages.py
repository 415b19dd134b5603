"""Every page of the dashboard against a real PostgreSQL: what it shows, that it escapes what it
shows, and that bad input gets a 4xx page with a clear message (never a 500 or a traceback)."""

from __future__ import annotations

import html
import re

import pytest
from web_helpers import add_workflow, fail_jobs, message, post, seed

from pgq_sa import Queue

PAGES = ["/", "/queues", "/tasks", "/jobs", "/failures", "/workers", "/schedules", "/workflows"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_on_an_empty_queue(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert "<main" in response.text
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script>" not in response.text  # no inline script anywhere
    assert " style=" not in response.text  # no inline style either (the CSP forbids it)


def test_the_pages_show_the_seeded_queue(engine, client):
    seeded = seed(engine)
    overview = client.get("/").text
    assert "billing" in overview
    assert "media" in overview
    assert 'class="badge paused"' in overview  # the paused queue stands out
    assert "worker-live" in overview
    assert "worker-dead" not in overview
    assert 'class="bar succeeded"' in overview
    assert 'class="bar failed"' in overview

    queues = client.get("/queues").text
    assert re.search(r'data-queue="media".*?paused.*?Resume', queues, re.S)
    assert re.search(r'data-queue="billing".*?active.*?Pause', queues, re.S)

    tasks = client.get("/tasks").text
    assert "payments.charge" in tasks
    assert "100.0%" in tasks

    failures = client.get("/failures").text
    assert "ConnectionError" in failures
    assert "ValueError" in failures
    assert re.search(r"ConnectionError</strong>.*?<td class=\"num\">3</td>", failures, re.S)

    workers = client.get("/workers").text
    assert "worker-live" in workers
    assert "worker-dead" in workers
    assert ">dead<" in workers

    schedules = client.get("/schedules").text
    assert "reports.nightly" in schedules
    assert "0 3 * * *" in schedules

    job = client.get(f"/jobs/{seeded['failed'][0]}").text
    assert "the gateway timed out" in job
    assert "Traceback (most recent call last)" in job
    assert '"amount": 0' in html.unescape(job)
    assert ">Retry<" in job

    workflows = client.get("/workflows").text
    assert "orders.fulfil" in workflows


def test_the_jobs_list_filters_and_pages_by_keyset(engine, client):
    queue = Queue()
    ids = [queue.enqueue(engine, "a", {"n": n}) for n in range(7)]
    other = queue.enqueue(engine, "b", queue="other")
    fail_jobs(engine, ids[:2])

    page = client.get("/jobs?limit=25").text
    shown = [int(i) for i in re.findall(r'href="/jobs/(\d+)"', page)]
    assert shown == sorted([*ids, other], reverse=True)

    failed = client.get("/jobs?status=failed").text
    assert [int(i) for i in re.findall(r'href="/jobs/(\d+)"', failed)] == ids[1::-1]

    by_queue = client.get("/jobs?queue=other").text
    assert [int(i) for i in re.findall(r'href="/jobs/(\d+)"', by_queue)] == [other]

    by_task = client.get("/jobs?task=a&status=queued").text
    assert [int(i) for i in re.findall(r'href="/jobs/(\d+)"', by_task)] == ids[:1:-1]

    # keyset: a page of 25 over 8 jobs has no "Older"; below the 3rd newest id, the rest
    below = client.get(f"/jobs?before={ids[5]}").text
    assert [int(i) for i in re.findall(r'href="/jobs/(\d+)"', below)] == ids[4::-1]


def test_the_older_link_follows_the_cursor(engine, client):
    queue = Queue()
    ids = [queue.enqueue(engine, "a") for _ in range(30)]
    first = client.get("/jobs?limit=25").text
    older = re.search(r'href="/jobs\?limit=25&amp;before=(\d+)">Older', first)
    assert older
    assert int(older.group(1)) == ids[5]
    second = client.get(f"/jobs?limit=25&before={older.group(1)}").text
    assert [int(i) for i in re.findall(r'href="/jobs/(\d+)"', second)] == ids[4::-1]
    assert "Older" not in second


def test_an_id_search_opens_the_job(engine, client):
    job_id = Queue().enqueue(engine, "a")
    response = client.get(f"/jobs?id={job_id}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{job_id}"


def test_a_dedupe_key_search_is_a_post_and_the_key_stays_out_of_urls(engine, client):
    queue = Queue()
    key = "customer:42/secret-ish"
    held = queue.enqueue(engine, "a", dedupe_key=key)
    queue.enqueue(engine, "a", dedupe_key="another")
    assert client.get("/jobs/search").status_code == 400  # not a job id; the search is a POST
    response = post(client, "/jobs/search", {"dedupe_key": key})
    assert response.status_code == 200
    assert [int(i) for i in re.findall(r'href="/jobs/(\d+)"', response.text)] == [held]
    assert key not in str(response.url)
    assert "customer:42/secret-ish" in response.text


HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"


def test_payloads_errors_and_names_are_escaped(engine, client):
    queue = Queue()
    job_id = queue.enqueue(engine, "evil<script>x</script>", {"html": HOSTILE}, dedupe_key=HOSTILE)
    fail_jobs(engine, [job_id], error_type="<b>Bold</b>", message_text=HOSTILE, traceback=HOSTILE)
    for path in (f"/jobs/{job_id}", "/jobs", "/failures", "/tasks", "/"):
        page = client.get(path).text
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
        assert "<b>Bold</b>" not in page, path
    detail = client.get(f"/jobs/{job_id}").text
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in detail


def test_the_workflow_page_draws_each_steps_state(engine, client):
    workflow_id, steps = add_workflow(
        engine,
        "orders <fulfil>",
        {"reserve": "succeeded", "charge": "running", "label": "waiting", "mail": "waiting"},
        [("reserve", "charge"), ("charge", "label"), ("label", "mail"), ("reserve", "mail")],
    )
    page = client.get(f"/workflows/{workflow_id}").text
    assert "orders &lt;fulfil&gt;" in page
    states = dict(re.findall(r'data-step="(\d+)" data-state="(\w+)"', page))
    assert states == {
        str(steps["reserve"]): "succeeded",
        str(steps["charge"]): "running",
        str(steps["label"]): "waiting",
        str(steps["mail"]): "waiting",
    }
    assert page.count('class="edge') == 4
    # layered by depth: reserve, then charge, then label, then mail (further right each time)
    xs = {
        step: float(re.search(rf'data-step="{i}".*?<rect x="([\d.]+)"', page, re.S).group(1))
        for step, i in steps.items()
    }
    assert xs["reserve"] < xs["charge"] < xs["label"] < xs["mail"]
    job = client.get(f"/jobs/{steps['mail']}").text
    assert f'href="/workflows/{workflow_id}"' in job
    assert "Waits for" in job


def test_workflow_buttons_are_hidden_until_the_queue_can_cancel_workflows(engine, client):
    workflow_id, _ = add_workflow(engine, "w", {"a": "failed", "b": "waiting"}, [("a", "b")])
    page = client.get(f"/workflows/{workflow_id}").text
    if hasattr(Queue, "cancel_workflow"):
        assert "Cancel workflow" in page
    else:
        assert "Cancel workflow" not in page
        assert "Retry workflow" not in page
        response = post(client, f"/workflows/{workflow_id}/cancel")
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/jobs/0", 400, "job id must be between 1 and"),
        ("/jobs/abc", 400, "job id must be a whole number"),
        ("/jobs/99999999999999999999999999", 400, "job id must be between 1 and"),
        ("/jobs/123456", 404, "there is no job 123456"),
        ("/jobs?status=done", 400, "status must be one of queued, waiting"),
        ("/jobs?before=-1", 400, "before must be a whole number"),
        ("/jobs?before=9223372036854775808", 400, "before must be between 1 and"),
        ("/jobs?limit=100000", 400, "limit must be one of 25, 50, 100, 200"),
        ("/jobs?task=" + "x" * 300, 400, "task:"),
        ("/jobs?queue=%00", 400, "queue:"),
        ("/jobs?id=12a", 400, "job id must be a whole number"),
        ("/workflows/77", 404, "there is no workflow 77"),
        ("/workflows?before=x", 400, "before must be a whole number"),
        ("/nowhere", 404, "there is no such page"),
    ],
)
def test_bad_input_gets_a_clear_4xx_page(client, path, status, fragment):
    response = client.get(path)
    assert response.status_code == status, response.text
    assert fragment in message(response.text).replace("&#39;", "'")
    assert "Traceback" not in response.text


def test_a_huge_cursor_is_fine_and_an_old_one_is_just_empty(engine, client):
    Queue().enqueue(engine, "a")
    assert client.get("/jobs?before=9223372036854775807").status_code == 200
    assert "No jobs here." in client.get("/jobs?before=1").text


def test_a_missing_schema_says_how_to_install_it(make_client):
    client = make_client(schema="nothing_here")
    response = client.get("/")
    assert response.status_code == 503
    assert "pgq-sa --schema nothing_here db upgrade" in response.text


def test_an_unreachable_database_is_a_503_page(make_client):
    client = make_client("postgresql://nobody@127.0.0.1:1/none")
    response = client.get("/")
    assert response.status_code == 503
    assert "cannot reach the database" in response.text


def test_pages_run_in_read_only_transactions(engine, make_client):
    """Defence in depth: even a page that tried to write could not."""
    import anyio
    from sqlalchemy import text

    site = make_client().app.state.site

    def write():
        yield text("UPDATE pgq.jobs SET priority = 1"), None

    with pytest.raises(Exception, match="read-only transaction"):
        anyio.run(site.db.read, write())
