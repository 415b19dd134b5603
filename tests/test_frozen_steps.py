"""Released migration steps never change, and never depend on live code.

Editing a table definition in ``_schema.py`` must not silently rewrite a step that databases have
already applied: each step's DDL is compared with the digest recorded when it was released, and
no step module may import anything from the package (whose code moves on).
"""

from __future__ import annotations

import ast
import hashlib
import inspect

import pytest

from pgq_sa._steps import STEPS

RELEASED = {
    "pgq_sa_0001": "15ea0f4553d5343d8345624de52c3e3ac6d514ccaa6f6cfbda4bb2726fe78b3f",
    "pgq_sa_0002": "dd30b9d5543a3876bc94509920571b88cbbeb295d1c808df5bc2cb2f5b2b1fee",
    "pgq_sa_0003": "bb0dd3bd62406135d364edee572ce33d9a8171791b070e3e065d33f04870825c",
    "pgq_sa_0004": "c5f331db58a3d1ca3865e0b6ef19865aa248436fbcc4777e9c9adf6000265037",
    "pgq_sa_0005": "f2b0fdbf49c5b7a1759f531a076a1b3656dfed446f795bee7d2266cf9223fbdd",
    "pgq_sa_0006": "7c983d2d54e9ab70613da303dfdbb958a6de387eba5dce319880dcba1f296278",
}


def _digest(step) -> str:
    ddl = [*step.up("pgq"), "--down--", *step.down("pgq")]
    return hashlib.sha256("\n;\n".join(ddl).encode()).hexdigest()


@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.revision)
def test_a_released_step_never_changes(step):
    assert step.revision in RELEASED, (
        f"{step.revision} is new: record its digest in RELEASED when it is released"
    )
    assert _digest(step) == RELEASED[step.revision], (
        f"the DDL of released step {step.revision} changed; write a new step instead"
    )


@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.revision)
def test_a_step_imports_no_live_code(step):
    tree = ast.parse(inspect.getsource(inspect.getmodule(step.up)))
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert [name for name in imported if name != "__future__"] == []


def test_steps_are_in_order_and_unique():
    revisions = [step.revision for step in STEPS]
    assert revisions == sorted(set(revisions))
    assert list(RELEASED) == revisions[: len(RELEASED)]
