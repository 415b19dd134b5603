"""The partition scenarios of tests/faults/partition_run.py, each on threads, asyncio and trio,
cutting in user space (any machine: only client-side deadlines can notice such a cut), and
the dead-connection ones again in a kernel blackhole (root on Linux) where keepalives can.

What each scenario proves (issue 14), on every worker kind: cut while jobs run, the cut
worker's jobs are rescued after its lease and its late outcomes refused; healed with its old
connections alive, or dead (in user space only the client-side statement deadlines can tell a
dead connection; in the kernel blackhole keepalives and tcp_user_timeout can too), it is back to
work within seconds and claims nothing while its row is gone (no duplicates but the jobs it was
running); a LISTEN connection cut alone falls back to polling and LISTENs again (the ping after
5 s of silence finds a dead one); a statement hung on a lock hits its deadline, the worker keeps
going, and SIGTERM still stops it. Each scenario bounds every wait and kills what hangs, so a
failure costs its bounds (under a minute), never a wedged run.
"""

from __future__ import annotations

import netns
import pytest
from partition_run import KINDS, Config, run_partition

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(180)]

IN_NAMESPACE = pytest.mark.skipif(
    netns.unavailable() is not None, reason=f"{netns.unavailable()}: netns runs skipped"
)


def scenario(name: str, network: str = "proxy", *marks: pytest.MarkDecorator) -> list:
    return [pytest.param(name, kind, network, marks=marks, id=f"{name}-{kind}") for kind in KINDS]


CASES = [
    *scenario("heal-alive"),
    *scenario("heal-dead"),
    *scenario("listen-alive"),
    *scenario("listen-dead"),
    *scenario("hung-statement"),
]
BLACKHOLE_CASES = [
    pytest.param(*case.values, marks=(*case.marks, IN_NAMESPACE), id=f"{case.id}-netns")
    for case in [*scenario("heal-dead", "netns"), *scenario("listen-dead", "netns")]
]


@pytest.mark.parametrize(("name", "kind", "network"), CASES + BLACKHOLE_CASES)
def test_partition(name, kind, network, server_url, tmp_path):
    outcome = run_partition(Config(name, kind, network), server_url, tmp_path)
    print(outcome.summary())
    assert outcome.ok, outcome.summary()


@pytest.mark.parametrize("kind", KINDS)
def test_the_cut_worker_is_known_by_its_application_name(kind, server_url, tmp_path):
    config = Config("listen-alive", kind, application_name="pgq_sa_cut_worker")
    outcome = run_partition(config, server_url, tmp_path)
    assert outcome.ok, outcome.summary()
    assert outcome.figures["application names seen"] == "pgq_sa_cut_worker"
