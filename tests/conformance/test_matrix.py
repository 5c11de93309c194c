"""Every architecture through every path: each cell passes, or is a named refusal with a one-line reason.

A cell that hits a known bug still being fixed is xfail(strict): it fails today, and turns into an XPASS (a failure)
once the fix lands, so that the mark is removed then. A cell that fails for another reason than its known bug errors.
"""

from __future__ import annotations

import pytest

from trl_mtp.conformance.configs import CHECKPOINTS
from trl_mtp.conformance.paths import cell_name, cells, run_cell
from trl_mtp.conformance.subjects import tiny_subject

# known bugs: (what it is, a phrase of the failure it causes)
SEQUENTIAL_COPIES = ("sequential heads deep-copy the final norm with its capture hook, whose Trunk holds the base: "
                     "hidden copies of the whole base", "hidden copies")
SAMPLING_CONFIG = ("speculative sampling ignores the generation config (temperature, top-k / top-p, repetition "
                   "penalty, transformers' default top_k 50)", "generate's distribution")
GREEDY_PROCESSORS = ("speculative greedy ignores the generation config's logits processors (repetition_penalty 1.05)",
                     "differs from generate")
WINDOW_HOLES = ("sliding window at batch > 1: the holes rejected drafts leave in the cache count inside the window",
                "differs from generate")
POSITION_LIMIT = ("every round verifies D drafts, past the position limit near it (GPT-2: IndexError in the learned "
                  "position table)", "IndexError")
NATIVE = {"deepseek_v3", "glm4.5"}
SLIDING = {"mistral", "gemma2", "phi3"}
SLOW_PATHS = {"sft"}


def known_bug(name: str, path: str, family: str):
    if path == "from_base" and family == "sequential":
        return SEQUENTIAL_COPIES
    if path == "sampled":
        return SAMPLING_CONFIG
    if name == "qwen2.5" and path in ("greedy", "position_limit"):
        return GREEDY_PROCESSORS
    if name in SLIDING and path == "greedy":
        return WINDOW_HOLES
    if name == "gpt2" and path == "position_limit":
        return POSITION_LIMIT
    return None


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
            bug = known_bug(name, path, family)
            if bug:
                marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=bug[0]))
            out.append(pytest.param(name, path, family, marks=marks, id=f"{name}-{cell_name(path, family)}"))
    return out


@pytest.mark.parametrize("name,path,family", _params())
def test_cell(name, path, family):
    result = run_cell(subject(name), path, family)
    refusal = expected_refusal(name, path)
    if refusal:
        assert result.status == "refused" and refusal in result.reason, result
        return
    bug = known_bug(name, path, family)
    if bug and result.status == "fail" and bug[1] not in result.reason:
        raise RuntimeError(f"{result.path} failed, but not with its known bug ({bug[1]!r}): {result.reason}")
    assert result.status == "pass", f"{result.path}: {result.reason}"
    assert "\n" not in result.reason
