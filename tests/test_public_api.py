"""The public surface: what users import, and the stable names of the errors they read.

Users import from ``pgq_sa`` (and the documented extras); every exception a user catches or reads
in a stored error is exported from ``pgq_sa``, and a stored error names its type by that export,
whichever internal module defines it (rows stored by earlier releases read the same).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pgq_sa
from pgq_sa._decisions import error_type_name, errored
from pgq_sa._job import JobError

# Exceptions that never reach users: internal control flow of the dashboard.
INTERNAL = {
    "pgq_sa.web._csrf.Refused",
    "pgq_sa.web._errors.PageError",
    "pgq_sa.web._errors.BadRequest",
    "pgq_sa.web._errors.NotFound",
    "pgq_sa.web._errors.Forbidden",
}


def _package_exceptions() -> list[type[BaseException]]:
    found = []
    for module_info in pkgutil.walk_packages(pgq_sa.__path__, "pgq_sa."):
        if module_info.name.startswith("pgq_sa.contrib.") or module_info.name.endswith("__main__"):
            continue  # behind extras; the command line itself
        try:
            module = importlib.import_module(module_info.name)
        except ImportError:  # an optional extra not installed
            continue
        for _, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and f"{value.__module__}.{value.__qualname__}" not in INTERNAL
            ):
                found.append(value)
    return found


def test_every_exception_users_meet_is_exported_under_its_name():
    missing = [
        f"{kind.__module__}.{kind.__qualname__}"
        for kind in _package_exceptions()
        if getattr(pgq_sa, kind.__name__, None) is not kind
    ]
    assert missing == []


@pytest.mark.parametrize(
    "name", ["JobTimeout", "JobCancelled", "WorkerLost", "TransactionEnded", "UpstreamFailed"]
)
def test_a_stored_error_names_its_type_by_the_export(name):
    kind = getattr(pgq_sa, name)
    assert error_type_name(kind) == f"pgq_sa.{name}"
    outcome = errored(1, 1, 1, kind("x"))
    import json

    assert json.loads(outcome.error)["type"] == f"pgq_sa.{name}"


@pytest.mark.parametrize(
    ("stored", "read"),
    [
        ("pgq_sa.decisions.JobTimeout", "pgq_sa.JobTimeout"),
        ("pgq_sa.decisions.JobCancelled", "pgq_sa.JobCancelled"),
        ("pgq_sa.workers.transactional.TransactionEnded", "pgq_sa.TransactionEnded"),
        ("pgq_sa.WorkerLost", "pgq_sa.WorkerLost"),
        ("ValueError", "ValueError"),
        ("myapp.errors.Boom", "myapp.errors.Boom"),
    ],
)
def test_errors_stored_by_earlier_releases_read_under_the_stable_name(stored, read):
    error = JobError.from_json({"type": stored, "message": "m", "traceback": None, "attempt": 1})
    assert error is not None
    assert error.type == read


def test_internal_modules_are_visibly_internal():
    public = {"pgq_sa.migrations", "pgq_sa.testing", "pgq_sa.contrib", "pgq_sa.web"}
    for module_info in pkgutil.iter_modules(pgq_sa.__path__, "pgq_sa."):
        name = module_info.name
        assert name in public or name.rsplit(".", 1)[1].startswith("_"), name
    # and the worker modules behind ThreadWorker and AsyncWorker are internal
    assert pgq_sa.ThreadWorker.__module__.startswith("pgq_sa._")
