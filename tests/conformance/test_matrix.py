"""Every architecture through every path: each cell passes, or is a named refusal with a one-line reason.

A cell that hits a known bug still being fixed is marked xfail(strict=True, reason=<the bug>), so that it fails the
suite once the fix lands and the mark is removed; none is marked today.
"""

from __future__ import annotations

import pytest

from trl_mtp.conformance.configs import CHECKPOINTS
from trl_mtp.conformance.paths import cell_name, cells, run_cell
from trl_mtp.conformance.subjects import tiny_subject

NATIVE = {"deepseek_v3", "glm4.5"}
SLOW_PATHS = {"sft"}


def expected_refusal(name: str, path: str) -> str | None:
    if path in ("native_export", "stock_use_mtp") and name not in NATIVE:
        return "has no native MTP layers"
    return None


_SUBJECTS: dict = {}


def subject(name: str):
    """One subject per checkpoint for the session: its fitted heads serve every decoding path."""
    if name not in _SUBJECTS:
        _SUBJECTS[name] = tiny_subject(name)
    return _SUBJECTS[name]


def _params():
    out = []
    for name in CHECKPOINTS:
        for path, family in cells(tiny_subject(name)):
            marks = [pytest.mark.slow] if path in SLOW_PATHS else []
            out.append(pytest.param(name, path, family, marks=marks, id=f"{name}-{cell_name(path, family)}"))
    return out


@pytest.mark.parametrize("name,path,family", _params())
def test_cell(name, path, family):
    result = run_cell(subject(name), path, family)
    refusal = expected_refusal(name, path)
    if refusal:
        assert result.status == "refused" and refusal in result.reason, result
        return
    assert result.status == "pass", f"{result.path}: {result.reason}"
    assert "\n" not in result.reason
