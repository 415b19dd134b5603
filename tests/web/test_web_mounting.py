"""The dashboard inside other applications: mounted in Starlette/FastAPI under a path, and in a
Flask (WSGI) app through a2wsgi: links, forms and cookies stay under the mount path."""

from __future__ import annotations

import re

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from pgq_sa import JobStatus, Queue
from pgq_sa.web import create_app


def test_mounted_in_starlette_under_a_path(engine):
    job_id = Queue().enqueue(engine, "a")
    host = Starlette(routes=[Mount("/admin/queue", app=create_app(engine, auth=None))])
    with TestClient(host) as client:
        page = client.get("/admin/queue/jobs")
        assert page.status_code == 200
        assert f'href="/admin/queue/jobs/{job_id}"' in page.text
        assert 'src="/admin/queue/static/dashboard.js"' in page.text
        assert 'action="/admin/queue/jobs/bulk"' in page.text
        assert "Path=/admin/queue/" in page.headers["set-cookie"]
        assert client.get("/admin/queue/static/dashboard.css").status_code == 200
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        response = client.post(
            f"/admin/queue/jobs/{job_id}/cancel",
            data={"csrf": token, "next": f"/admin/queue/jobs/{job_id}"},
            headers={"origin": "http://testserver"},
            follow_redirects=False,
        )
        assert response.headers["location"] == f"/admin/queue/jobs/{job_id}?done=cancelled"
    assert Queue().get(engine, job_id).status is JobStatus.cancelled


def test_mounted_in_fastapi(engine):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    app.mount("/queue", create_app(engine, auth=None))
    with TestClient(app) as client:
        assert client.get("/queue/").status_code == 200
        assert 'href="/queue/failures"' in client.get("/queue/").text


def test_mounted_in_flask_through_a2wsgi(engine):
    flask = pytest.importorskip("flask")
    a2wsgi = pytest.importorskip("a2wsgi")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    job_id = Queue().enqueue(engine, "a")
    shop = flask.Flask("shop")

    @shop.get("/")
    def home():
        return "the shop"

    shop.wsgi_app = DispatcherMiddleware(
        shop.wsgi_app, {"/queue": a2wsgi.ASGIMiddleware(create_app(engine, auth=None))}
    )
    client = shop.test_client()
    assert client.get("/").text == "the shop"
    page = client.get("/queue/jobs")
    assert page.status_code == 200
    assert f'href="/queue/jobs/{job_id}"' in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    response = client.post(
        f"/queue/jobs/{job_id}/cancel",
        data={"csrf": token, "next": f"/queue/jobs/{job_id}"},
        headers={"Origin": "http://localhost"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/queue/jobs/{job_id}?done=cancelled"
    assert Queue().get(engine, job_id).status is JobStatus.cancelled
