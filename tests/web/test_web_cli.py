"""``pgq-sa web`` (the loopback rule, auth from the environment, a missing schema) and
``pgq-sa demo --web`` (it serves the dashboard while the jobs run and prints the address)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from pgq_sa._cli import cli
from pgq_sa.web._server import is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.com", False),
    ],
)
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def _run(database_url, *args, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_SA_WEB_")}
    environment.update(env or {})
    return CliRunner().invoke(
        cli, ["--database-url", database_url.render_as_string(False), "web", *args], env=environment
    )


def test_it_refuses_a_public_address_without_auth(database_url):
    result = _run(database_url, "--host", "0.0.0.0")
    assert result.exit_code == 1
    assert "refusing to serve the dashboard on 0.0.0.0 without authentication" in result.output
    assert "PGQ_SA_WEB_TOKEN" in result.output
    assert "--insecure-no-auth" in result.output
    assert "Traceback" not in result.output


def test_a_bad_credential_setting_says_the_fix(database_url):
    result = _run(database_url, env={"PGQ_SA_WEB_USER": "ops"})
    assert result.exit_code == 2
    assert "set both PGQ_SA_WEB_USER and PGQ_SA_WEB_PASSWORD" in result.output


def test_a_missing_schema_says_how_to_install_it(database_url):
    result = CliRunner().invoke(
        cli,
        ["--database-url", database_url.render_as_string(False), "--schema", "elsewhere", "web"],
    )
    assert result.exit_code == 1
    assert "pgq-sa --schema elsewhere db upgrade" in result.output


def _serve(args, env=None):
    environment = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pgq_sa", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )


def _line(process, pattern, timeout=60.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"never printed {pattern!r}: {''.join(seen)}")


@pytest.mark.slow
def test_web_serves_with_a_token_on_a_public_address(database_url, unused_port):
    process = _serve(
        [
            "--database-url",
            database_url.render_as_string(False),
            "web",
            "--host",
            "0.0.0.0",
            "--port",
            str(unused_port),
            "--read-only",
        ],
        {"PGQ_SA_WEB_TOKEN": "a-token-long-enough-1234"},
    )
    try:
        found = _line(process, r"at (http://\S+) \(a bearer token, read-only\)")
        url = found.group(1).replace("0.0.0.0", "127.0.0.1")
        assert _first_answer(url).status_code == 401  # the address is printed before it binds
        page = httpx.get(url + "jobs", headers={"authorization": "Bearer a-token-long-enough-1234"})
        assert page.status_code == 200
        assert "Read-only dashboard" in page.text
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=20)[0]
    assert process.returncode == 0, rest


@pytest.mark.slow
def test_demo_web_serves_the_dashboard_while_its_jobs_run(database_url):
    process = _serve(
        [
            "--database-url",
            database_url.render_as_string(False),
            "demo",
            "--jobs",
            "30",
            "--web",
            "--web-port",
            "0",
            "--demo-schema",
            "pgq_demo_web",
        ]
    )
    try:
        url = _line(process, r"dashboard: (http://127\.0\.0\.1:\d+/)").group(1)
        assert httpx.get(url, timeout=10).status_code == 200
        _line(process, r"the dashboard keeps serving at")
        tasks = httpx.get(url + "tasks", timeout=10).text
        assert "payments.charge" in tasks
        assert "reports.broken" in tasks
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert process.returncode == 0, rest


def _first_answer(url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def unused_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
