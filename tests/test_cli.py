"""The command line against a real database: db, enqueue, jobs, queues; mistakes exit cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pgq_sa import JobStatus, Queue
from pgq_sa._cli import cli
from pgq_sa.migrations import head_revision


def _url(url) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
def run(database_url):
    runner = CliRunner()

    def invoke(*args: str, url=database_url):
        return runner.invoke(cli, ["--database-url", _url(url), *args], catch_exceptions=False)

    return invoke


def test_db_commands_on_an_empty_database(empty_database_url):
    runner = CliRunner()
    base = ["--database-url", _url(empty_database_url)]
    result = runner.invoke(cli, [*base, "db", "current"])
    assert result.exit_code == 0
    assert "not installed" in result.output
    assert runner.invoke(cli, [*base, "db", "check"]).exit_code == 1
    result = runner.invoke(cli, [*base, "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
    assert runner.invoke(cli, [*base, "db", "check"]).exit_code == 0
    assert runner.invoke(cli, [*base, "db", "downgrade", "base"]).exit_code == 0
    assert "not installed" in runner.invoke(cli, [*base, "db", "current"]).output


def test_enqueue_show_cancel_retry(run, engine):
    result = run("enqueue", "emails.send", '{"to": "a@example.com"}', "--priority", "3")
    assert result.exit_code == 0, result.output
    job_id = int(result.output.strip())
    shown = json.loads(run("jobs", "show", str(job_id), "--json").output)
    assert shown["payload"] == {"to": "a@example.com"}
    assert shown["priority"] == 3
    assert shown["status"] == "queued"
    assert run("jobs", "cancel", str(job_id)).exit_code == 0
    assert Queue().get(engine, job_id).status is JobStatus.cancelled
    assert run("jobs", "cancel", str(job_id)).exit_code == 1
    assert run("jobs", "retry", str(job_id)).exit_code == 0
    assert Queue().get(engine, job_id).status is JobStatus.queued


def test_pause_resume(run, engine):
    assert run("queues", "pause", "media").exit_code == 0
    assert run("queues", "resume", "media").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "t", "{not json"], "not valid JSON"),
        (["enqueue", "", "{}"], "must not be empty"),
        (["enqueue", "t", "[NaN]"], "valid JSON"),
        (["enqueue", "t", "--priority", "99999"], "out of range"),
        (["enqueue", "t", "--delay", "-5"], "0 or more"),
        (["jobs", "show", "0"], "0"),
        (["jobs", "show", "abc"], "abc"),
        (["jobs", "show", "424242"], "no job with id 424242"),
        (["--schema", "Bad-Name", "db", "current"], "schema"),
        (["db", "downgrade", "pgq_sa_7777"], "does not know"),
    ],
)
def test_user_mistakes_get_a_message_and_no_traceback(run, engine, args, message):
    before = Queue().get(engine, 1)
    result = run(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert Queue().get(engine, 1) == before


def test_unreachable_database_is_a_message():
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--database-url", "postgresql://nobody@127.0.0.1:1/none", "db", "current"]
    )
    assert result.exit_code == 1
    assert "cannot reach the database" in result.output


def test_missing_schema_suggests_upgrade(empty_database_url):
    result = CliRunner().invoke(cli, ["--database-url", _url(empty_database_url), "enqueue", "t"])
    assert result.exit_code == 1
    assert "pgq-sa db upgrade" in result.output


def test_help_names_the_environment_variables():
    result = CliRunner().invoke(cli, ["--help"])
    assert "PGQ_SA_DATABASE_URL" in result.output
    assert "PGQ_SA_SCHEMA" in result.output


def test_python_dash_m_entry_point(database_url):
    done = subprocess.run(
        [sys.executable, "-m", "pgq_sa", "--database-url", _url(database_url), "db", "current"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert head_revision() in done.stdout


APPS = str(__import__("pathlib").Path(__file__).parent / "apps")


def _run_command(url, *args):
    import os

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgq_sa",
            "--database-url",
            _url(url),
            "run",
            "sample_app:queue",
            "--poll-interval",
            "0.2",
            *args,
        ],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": APPS},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("mode", [[], ["--async"], ["--async", "--backend", "trio"]])
def test_run_until_empty(database_url, engine, mode):
    ids = [Queue().enqueue(engine, "sample.sleep", {"seconds": 0}) for _ in range(5)]
    ids.append(Queue().enqueue(engine, "sample.async", {"seconds": 0}))
    process = _run_command(database_url, "--until-empty", *mode)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert all(Queue().get(engine, i).status is JobStatus.succeeded for i in ids)


@pytest.mark.parametrize("mode", [[], ["--async"], ["--async", "--backend", "trio"]])
def test_sigterm_lets_the_running_job_finish(database_url, engine, mode, tmp_path):
    import signal
    import time

    started = tmp_path / "started"
    job_id = Queue().enqueue(engine, "sample.sleep", {"seconds": 1.5, "started": str(started)})
    process = _run_command(database_url, *mode)
    deadline = time.monotonic() + 30
    # The handler itself says it runs: "running" in the table only means claimed, and a job
    # claimed but not yet started when SIGTERM arrives is handed back, not run.
    while not started.exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    info = Queue().get(engine, job_id)
    assert info.status is JobStatus.succeeded
    assert info.result["slept"] == 1.5


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("sample_app", "MODULE:QUEUE"),
        ("no_such_module:queue", "cannot import"),
        ("sample_app:not_a_queue", "not a pgq_sa.Queue"),
        ("sample_app:missing", "nothing"),
    ],
)
def test_run_with_a_bad_target(database_url, target, message, monkeypatch):
    monkeypatch.syspath_prepend(APPS)
    result = CliRunner().invoke(cli, ["--database-url", _url(database_url), "run", target])
    assert result.exit_code == 2
    assert message in result.output
