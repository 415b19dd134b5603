"""``pgq-sa workflows list|show|cancel|retry`` and ``status`` with workflow steps waiting."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pgq_sa import Queue, Workflow
from pgq_sa._cli import cli
from pgq_sa.testing import run_due_jobs


@pytest.fixture
def run(database_url):
    runner = CliRunner()

    def invoke(*args: str):
        url = database_url.render_as_string(hide_password=False)
        result = runner.invoke(cli, ["--database-url", url, *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result

    return invoke


def _queue() -> Queue:
    queue = Queue()
    queue.task("stock.reserve")(lambda job: "reserved")
    queue.task("payments.charge", max_attempts=1)(lambda job: 1 / 0)
    queue.task("shipping.label")(lambda job: None)
    queue.task("orders.cleanup")(lambda job: None)
    return queue


def _order(queue: Queue, engine) -> int:
    flow = Workflow("orders.fulfil")
    reserve = flow.add("stock.reserve", {"order": 7})
    charge = flow.add("payments.charge", {"order": 7}, after=[reserve])
    labels = flow.add_many("shipping.label", [{"parcel": p} for p in range(2)], after=[charge])
    flow.add("orders.cleanup", after=[charge, *labels], on_upstream_failure="run")
    return queue.enqueue_workflow(engine, flow)


def test_list_show_cancel_and_retry(run, engine):
    queue = _queue()
    failing = _order(queue, engine)
    run_due_jobs(queue, engine)  # the charge fails: the labels are cancelled, cleanup runs
    waiting = _order(queue, engine)  # not run: one step queued, four waiting

    listed = run("workflows", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.output)}
    assert rows[failing]["status"] == "failed"
    assert rows[failing]["name"] == "orders.fulfil"
    assert rows[failing]["states"]["cancelled"] == 2
    assert rows[waiting]["status"] == "running"
    only = json.loads(run("workflows", "list", "--status", "failed", "--json").output)
    assert [row["id"] for row in only] == [failing]
    text = run("workflows", "list").output
    assert "orders.fulfil" in text
    assert "failed" in text

    shown = run("workflows", "show", str(failing))
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"workflow {failing} 'orders.fulfil': failed")
    assert "stock.reserve  succeeded" in lines[1]
    assert "└── " in lines[2]
    assert "payments.charge  failed  ZeroDivisionError" in lines[2]
    assert any("shipping.label  cancelled  pgq_sa.UpstreamFailed" in line for line in lines)
    assert any("orders.cleanup" in line and "also waits for" in line for line in lines)
    data = json.loads(run("workflows", "show", str(failing), "--json").output)
    assert data["status"] == "failed"
    assert [s["task"] for s in data["steps"]][:2] == ["stock.reserve", "payments.charge"]
    assert data["steps"][1]["waits_for"] == [data["steps"][0]["id"]]

    status = json.loads(run("status", "--json").output)
    by_task = {t["task"]: t for t in status["tasks"]}
    assert by_task["shipping.label"]["waiting"] == 2  # the second workflow's
    assert status["queues"][0]["waiting"] == 4
    assert "waiting" in run("status").output.splitlines()[2]

    cancelled = run("workflows", "cancel", str(waiting))
    assert cancelled.exit_code == 0, cancelled.output
    assert "5 steps cancelled" in cancelled.output
    again = run("workflows", "cancel", str(waiting))
    assert again.exit_code == 1
    assert "no step left to cancel" in again.output

    retried = run("workflows", "retry", str(failing))
    assert retried.exit_code == 0, retried.output
    assert "3 steps will run again" in retried.output  # charge and its two labels
    assert run("workflows", "retry", str(failing)).exit_code == 1

    for command in ("show", "cancel", "retry"):
        missing = run("workflows", command, "999999")
        assert missing.exit_code == 1
        assert "no workflow with id 999999" in missing.output
    bad = run("workflows", "show", "zero")
    assert bad.exit_code == 2
    assert run("workflows", "list", "--status", "lost").exit_code == 2


def test_an_empty_list(run):
    assert run("workflows", "list").output.strip() == "(no workflows)"
    assert json.loads(run("workflows", "list", "--json").output) == []
