"""The dashboard in a real browser: Playwright driving Debian's Chromium (never a downloaded
one) against a real server, a real PostgreSQL and, where a scenario needs one, a real worker.

Screenshots of each page go to ``PGQ_SA_WEB_SCREENSHOTS`` (a folder) or the test's tmp folder.
On a machine without /usr/bin/chromium these tests skip; CI installs it (.ci/run).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")

from web_helpers import add_history, add_workflow, fail_jobs, seed  # noqa: E402

from pgq_sa import Job, JobStatus, Queue, ThreadWorker  # noqa: E402
from pgq_sa.web._app import create_app  # noqa: E402
from pgq_sa.web._server import BackgroundServer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(request, tmp_path):
    """``shots(page, name)`` saves a full-page screenshot as a test artefact."""
    folder = Path(os.environ.get("PGQ_SA_WEB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page, name):
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return shoot


@pytest.fixture
def serve(engine):
    servers = []

    def start(**options):
        options.setdefault("auth", None)
        server = BackgroundServer(create_app(engine, **options))
        servers.append(server)
        return server.start().rstrip("/")

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


@pytest.fixture
def worker(engine):
    """``worker(queue)``: a real ThreadWorker on a thread, stopped at the end of the test."""
    running = []

    def start(queue):
        instance = ThreadWorker(queue, engine, threads=2, poll_interval=0.2, handle_signals=False)
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        running.append((instance, thread))
        return instance

    yield start
    for instance, thread in running:
        instance.stop()
        thread.join(30)


def _wait_state(engine, queue, job_id, status, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (info := queue.get(engine, job_id)).status is not status:
        assert time.monotonic() < deadline, f"job {job_id} stayed {info.status}"
        time.sleep(0.05)


def test_a_failed_job_is_found_retried_and_seen_succeeding_without_reload(
    engine, serve, page, worker, shots
):
    queue = Queue()
    release = threading.Event()

    @queue.task("payments.charge", max_attempts=1)
    def charge(job: Job) -> str:
        if job.attempt == 1:
            raise ConnectionError("the payment gateway timed out")
        release.wait(30)  # the retried attempt ends once the browser watches
        return "charged"

    job_id = queue.enqueue(engine, "payments.charge", {"order": 7})
    worker(queue)
    _wait_state(engine, queue, job_id, JobStatus.failed)
    base = serve()

    page.goto(base + "/failures")
    group = page.locator("table.failures tbody tr").first
    sync_api.expect(group).to_contain_text("ConnectionError")
    sync_api.expect(group).to_contain_text("the payment gateway timed out")
    shots(page, "failures")
    group.get_by_role("link", name=f"#{job_id}").click()
    sync_api.expect(page.locator("h1 .badge")).to_have_text("failed")
    sync_api.expect(page.locator("pre.traceback")).to_contain_text("ConnectionError")
    shots(page, "job-failed")

    page.get_by_role("button", name="Retry").click()
    sync_api.expect(page.locator(".banner.done")).to_contain_text("Queued again.")
    sync_api.expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    page.evaluate("window.__noReload = true")
    sync_api.expect(page.locator("h1 .badge")).to_have_text("running", timeout=WAIT_MS)
    release.set()
    sync_api.expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    assert page.evaluate("window.__noReload") is True  # updated in place, never reloaded
    sync_api.expect(page.locator("#result")).to_contain_text("charged")
    shots(page, "job-succeeded")


def test_a_queue_is_paused_and_resumed(engine, serve, page, shots):
    queue = Queue()
    queue.enqueue(engine, "media.resize", queue="media")
    base = serve()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(base + "/queues")
    row = page.locator('tr[data-queue="media"]')
    row.get_by_role("button", name="Pause").click()
    sync_api.expect(row.locator(".badge")).to_have_text("paused")
    shots(page, "queues-paused")
    assert "media" in {q.name for q in _queues(engine, queue) if q.paused}
    row.get_by_role("button", name="Resume").click()
    sync_api.expect(row.locator(".badge")).to_have_text("active")
    assert not [q for q in _queues(engine, queue) if q.paused]


def _queues(engine, queue):
    from pgq_sa._ops import producer
    from pgq_sa._ops.drive import run_sync

    return run_sync(engine, producer.list_queues(queue.statements))


def test_a_running_job_is_cancelled_from_its_page(engine, serve, page, worker, shots):
    queue = Queue()
    started = threading.Event()

    @queue.task("reports.long")
    def long_report(job: Job) -> None:
        started.set()
        job.wait_cancelled(60)

    job_id = queue.enqueue(engine, "reports.long", {"report": 3})
    worker(queue)
    assert started.wait(20)
    base = serve()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{base}/jobs/{job_id}")
    sync_api.expect(page.locator("h1 .badge").first).to_have_text("running")
    shots(page, "job-running")
    page.get_by_role("button", name="Cancel").click()
    sync_api.expect(page.locator(".banner.done")).to_contain_text("Cancellation requested.")
    sync_api.expect(page.locator("h1 .badge").first).to_have_text("cancelled", timeout=WAIT_MS)
    _wait_state(engine, queue, job_id, JobStatus.cancelled)


HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def test_a_hostile_payload_renders_as_text(engine, serve, page, shots):
    queue = Queue()
    job_id = queue.enqueue(engine, "evil<b>task</b>", {"html": HOSTILE}, dedupe_key=HOSTILE)
    fail_jobs(engine, [job_id], error_type="<i>Err</i>", message_text=HOSTILE, traceback=HOSTILE)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    base = serve()
    for path in (f"/jobs/{job_id}", "/jobs", "/failures", "/tasks", "/"):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__pwned") is None, path
    page.goto(f"{base}/jobs/{job_id}")
    sync_api.expect(page.locator("#payload")).to_contain_text("<script>window.__pwned = 1</script>")
    sync_api.expect(page.locator(".error-line")).to_contain_text("<i>Err</i>")
    assert page.locator("script:not([src])").count() == 0
    assert page.locator("i", has_text="Err").count() == 0  # shown as text, not markup
    assert not dialogs
    shots(page, "job-hostile")


def test_the_workflow_graph_shows_each_steps_state(engine, serve, page, shots):
    workflow_id, steps = add_workflow(  # rows inserted directly (see web_helpers.add_workflow)
        engine,
        "orders.fulfil",
        {
            "stock.reserve": "succeeded",
            "payments.charge": "succeeded",
            "fraud.check": "failed",
            "shipping.label": "running",
            "invoice.render": "queued",
            "emails.confirm": "waiting",
        },
        [
            ("stock.reserve", "payments.charge"),
            ("stock.reserve", "fraud.check"),
            ("payments.charge", "shipping.label"),
            ("payments.charge", "invoice.render"),
            ("shipping.label", "emails.confirm"),
            ("invoice.render", "emails.confirm"),
            ("fraud.check", "emails.confirm"),
        ],
    )
    base = serve()
    page.goto(f"{base}/workflows/{workflow_id}")
    for step, state in [
        ("stock.reserve", "succeeded"),
        ("fraud.check", "failed"),
        ("shipping.label", "running"),
        ("invoice.render", "queued"),
        ("emails.confirm", "waiting"),
    ]:
        node = page.locator(f'svg.graph a[data-step="{steps[step]}"]')
        sync_api.expect(node).to_have_attribute("data-state", state)
        sync_api.expect(node.locator("text.state")).to_contain_text(state)
    fills = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('svg.graph a.node')].map(
               a => [a.dataset.state, getComputedStyle(a.querySelector('rect')).fill]))"""
    )
    assert fills["failed"] != fills["succeeded"] != fills["waiting"]
    assert fills["failed"] == "rgb(253, 228, 228)"  # the failed step stands out in red
    shots(page, "workflow")
    page.locator(f'svg.graph a[data-step="{steps["fraud.check"]}"]').click()
    sync_api.expect(page).to_have_url(f"{base}/jobs/{steps['fraud.check']}")


def test_the_read_only_dashboard_has_no_working_action(engine, serve, page, shots):
    seeded = seed(engine)
    base = serve(read_only=True)
    failed = seeded["failed"][0]
    page.goto(f"{base}/jobs/{failed}")
    sync_api.expect(page.locator("#mode")).to_contain_text("Read-only dashboard")
    assert page.get_by_role("button", name="Retry").count() == 0
    for path in ("/queues", "/failures", "/schedules", "/jobs"):
        page.goto(base + path)
        assert page.locator("main form[method=post] button.primary").count() == 0, path
        assert page.get_by_role("button", name="Pause").count() == 0, path
    shots(page, "read-only-jobs")
    # forging the request from the page itself (same origin, a valid token) is refused too
    status = page.evaluate(
        """async (path) => {
            const token = document.querySelector('input[name=csrf]').value;
            const body = new URLSearchParams({csrf: token, next: '/'});
            const response = await fetch(path, {method: 'POST', body});
            return response.status;
        }""",
        f"/jobs/{failed}/retry",
    )
    assert status == 403
    assert Queue().get(engine, failed).status is JobStatus.failed


def test_every_page_for_the_record(engine, serve, page, shots):
    """Screenshots of each page over a seeded queue (the docs use the best of them)."""
    seeded = seed(engine)
    add_history(engine)
    base = serve()
    pages = {
        "overview": "/",
        "queues": "/queues",
        "tasks": "/tasks",
        "jobs": "/jobs",
        "failures-seeded": "/failures",
        "workers": "/workers",
        "schedules": "/schedules",
        "workflows": "/workflows",
        "job": f"/jobs/{seeded['failed'][0]}",
    }
    for name, path in pages.items():
        page.goto(base + path)
        sync_api.expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
        shots(page, name)
