"""Who may use the dashboard: HTTP Basic, bearer token (and its login form), the host
application's own check; and what a database role that may only read, or only produce, gets."""

from __future__ import annotations

import base64
import re
import uuid

import pytest
from sqlalchemy import create_engine
from web_helpers import ORIGIN, message, post, seed

from pgq_sa import JobStatus, Queue
from pgq_sa._config import make_engine
from pgq_sa.web import _auth as auth

TOKEN = "t0ken-that-is-long-enough"


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth(make_client):
    client = make_client(auth=("ops", "s3cret"))
    refused = client.get("/")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Basic realm="pgq-sa dashboard"')
    assert client.get("/", headers=basic("ops", "wrong")).status_code == 401
    assert client.get("/", headers=basic("someone", "s3cret")).status_code == 401
    assert client.get("/", headers={"authorization": "Basic !!!"}).status_code == 401
    assert client.get("/", headers=basic("ops", "s3cret")).status_code == 200
    assert client.get("/events", headers=basic("ops", "wrong")).status_code == 401
    assert client.get("/static/dashboard.js").status_code == 200  # static files are public


def test_token_auth_header_and_login_form(make_client):
    client = make_client(auth=TOKEN)
    assert client.get("/jobs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/jobs", headers={"authorization": "Bearer nope"}).status_code == 401
    login = client.get("/jobs", headers={"accept": "text/html"})
    assert login.status_code == 401
    assert 'name="token"' in login.text
    token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    wrong = client.post(
        "/login", data={"csrf": token, "token": "nope", "next": "/jobs"}, headers={"origin": ORIGIN}
    )
    assert wrong.status_code == 401
    assert "not right" in wrong.text
    right = client.post(
        "/login",
        data={"csrf": token, "token": TOKEN, "next": "/jobs"},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert right.status_code == 303
    assert right.headers["location"] == "/jobs"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/jobs").status_code == 200  # the session cookie lets the browser in
    logout = post(client, "/logout", {})
    assert logout.status_code == 303
    assert client.get("/jobs").status_code == 401


def test_a_forged_or_expired_session_is_refused(make_client):
    client = make_client(auth=TOKEN)
    site = client.app.state.site
    expired = auth.session_cookie(site.secret, site.auth, now=0)
    client.cookies.set(auth.SESSION_COOKIE, expired)
    assert client.get("/").status_code == 401
    client.cookies.set(auth.SESSION_COOKIE, "99999999999.forged")
    assert client.get("/").status_code == 401


def test_the_host_applications_own_check(make_client):
    async def check(request):
        return request.headers.get("x-user") == "admin"

    client = make_client(auth=check)
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"x-user": "admin"}).status_code == 200


def test_auth_from_the_environment():
    assert auth.from_environment({}).kind == "none"
    assert auth.from_environment({"PGQ_SA_WEB_TOKEN": TOKEN}).kind == "token"
    basic_auth = auth.from_environment({"PGQ_SA_WEB_USER": "u", "PGQ_SA_WEB_PASSWORD": "p"})
    assert (basic_auth.kind, basic_auth.user, basic_auth.password) == ("basic", "u", "p")
    with pytest.raises(ValueError, match="set both PGQ_SA_WEB_USER and PGQ_SA_WEB_PASSWORD"):
        auth.from_environment({"PGQ_SA_WEB_USER": "u"})
    with pytest.raises(ValueError, match="not both"):
        auth.from_environment({"PGQ_SA_WEB_TOKEN": TOKEN, "PGQ_SA_WEB_USER": "u"})
    with pytest.raises(ValueError, match="too short"):
        auth.from_environment({"PGQ_SA_WEB_TOKEN": "short"})
    with pytest.raises(TypeError, match="auth must be"):
        auth.resolve(42)


@pytest.fixture
def role_url(database_url, admin_engine):
    """``role_url(privileges)``: a URL logging in as a new role granted ``privileges`` (SQL run
    as the owner in the test database); the role is dropped afterwards."""
    created: list[str] = []
    owner = make_engine(database_url)

    def make(*grants: str):
        name = f"web_{uuid.uuid4().hex[:10]}"
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
        created.append(name)
        with owner.begin() as connection:
            for grant in grants:
                connection.exec_driver_sql(grant.format(role=f'"{name}"'))
        return database_url.set(username=name, password=None), name

    yield make
    with owner.begin() as connection:
        for name in created:
            connection.exec_driver_sql(f'DROP OWNED BY "{name}"')
    owner.dispose()
    with admin_engine.connect() as connection:
        for name in created:
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')


def test_a_select_only_role_gets_a_read_only_dashboard_with_a_notice(engine, make_client, role_url):
    seeded = seed(engine)
    url, name = role_url(
        "GRANT USAGE ON SCHEMA pgq TO {role}", "GRANT SELECT ON ALL TABLES IN SCHEMA pgq TO {role}"
    )
    reader = create_engine(url.set(drivername="postgresql+psycopg"))
    client = make_client(reader)
    try:
        for path in (
            "/",
            "/queues",
            "/tasks",
            "/jobs",
            "/failures",
            "/workers",
            "/schedules",
            "/workflows",
            f"/jobs/{seeded['failed'][0]}",
            f"/workflows/{seeded['workflow']}",
        ):
            page = client.get(path)
            assert page.status_code == 200, path
            assert f"the database role <code>{name}</code> may only read" in page.text, path
        assert ">Retry<" not in client.get(f"/jobs/{seeded['failed'][0]}").text
        refused = post(client, f"/jobs/{seeded['failed'][0]}/retry", {})
        assert refused.status_code == 403
        assert f"the database role '{name}' may not retry jobs" in message(refused.text).replace(
            "&#39;", "'"
        )
        assert Queue().get(engine, seeded["failed"][0]).status is JobStatus.failed
    finally:
        reader.dispose()


def test_a_producer_role_reads_jobs_and_cancels_but_sees_why_other_pages_are_closed(
    engine, make_client, role_url
):
    from pgq_sa import _roles as roles

    queue = Queue()
    job_id = queue.enqueue(engine, "a")
    url, name = role_url()
    roles.grant(engine, producer=name)
    producer = create_engine(url.set(drivername="postgresql+psycopg"))
    client = make_client(producer)
    try:
        jobs = client.get("/jobs")
        assert jobs.status_code == 200
        assert "cannot read workers, queues, schedules" in jobs.text
        overview = client.get("/")
        assert overview.status_code == 403  # a page, with the fix, never a 500
        assert "permission denied" in message(overview.text)
        assert "pgq-sa db grant" in message(overview.text)
        page = client.get(f"/jobs/{job_id}").text
        assert ">Cancel<" in page  # producers may cancel
        assert post(client, f"/jobs/{job_id}/cancel", {}).status_code == 303
        assert queue.get(engine, job_id).status is JobStatus.cancelled
        assert post(client, f"/jobs/{job_id}/retry", {}).status_code == 403
    finally:
        producer.dispose()
