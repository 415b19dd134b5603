"""The partition scenarios of tests/faults/partition_run.py, each on threads, asyncio and trio,
cutting in user space (any machine: only client-side deadlines can notice such a cut), and
the dead-connection ones again in a kernel blackhole (root on Linux) where keepalives can.

The scenarios the new worker core must fix (issue 14) are marked xfail (not strict): cut in
user space, a worker whose connections died never claims again and ignores SIGTERM, and a
LISTEN connection that died is never noticed (only a client-side deadline or probe can tell);
a statement waiting on a lock has no deadline and blocks SIGTERM. Heal-alive fails now and
then: the claim sent during the cut runs at the heal while the worker's row is gone, so the
rescue (often the worker's own, also sent during the cut) takes those jobs back and they run
twice (claims do not check the claimer's row). In the kernel blackhole the
same heal-dead and listen-dead pass today: the engines' and the LISTEN connection's keepalives
and tcp_user_timeout (NetworkSettings) end the dead connections.
Each scenario bounds every wait and kills what hangs, so a failure costs its bounds (under a
minute), never a wedged run; ``-rxX`` shows how each failed or that it now passes.
"""

from __future__ import annotations

import netns
import pytest
from partition_run import KINDS, Config, run_partition

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ISSUE_14 = pytest.mark.xfail(strict=False, reason="issue 14: fixed by the new worker core")
IN_NAMESPACE = pytest.mark.skipif(
    netns.unavailable() is not None, reason=f"{netns.unavailable()}: netns runs skipped"
)


def scenario(name: str, network: str = "proxy", *marks: pytest.MarkDecorator) -> list:
    return [pytest.param(name, kind, network, marks=marks, id=f"{name}-{kind}") for kind in KINDS]


CASES = [
    *scenario("heal-alive", "proxy", ISSUE_14),
    *scenario("heal-dead", "proxy", ISSUE_14),
    *scenario("listen-alive"),
    *scenario("listen-dead", "proxy", ISSUE_14),
    *scenario("hung-statement", "proxy", ISSUE_14),
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


@pytest.mark.parametrize(
    "kind",
    [
        "threads",
        pytest.param(
            "asyncio",
            marks=pytest.mark.xfail(
                strict=False,
                reason="application_name on asyncpg: fixed by the async URL translation "
                "(branch compat)",
            ),
        ),
        "trio",
    ],
)
def test_the_cut_worker_is_known_by_its_application_name(kind, server_url, tmp_path):
    config = Config("listen-alive", kind, application_name="pgq_sa_cut_worker")
    outcome = run_partition(config, server_url, tmp_path)
    assert outcome.ok, outcome.summary()
    assert outcome.figures["application names seen"] == "pgq_sa_cut_worker"
