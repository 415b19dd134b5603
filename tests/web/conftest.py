"""Fixtures of the dashboard tests: the app on the test's database, and a client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard tests need the 'web' extra")

from starlette.testclient import TestClient

from pgq_sa.web import create_app


@pytest.fixture
def make_client(engine) -> Iterator[Any]:
    """``make_client(**create_app options)``: a TestClient of a dashboard on the test database."""
    clients: list[TestClient] = []

    def make(bind: Any = None, **options: Any) -> TestClient:
        options.setdefault("auth", None)
        client = TestClient(create_app(bind if bind is not None else engine, **options))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
