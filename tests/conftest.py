"""Shared fixtures. Every test session gets its own cache (TRL_MTP_CACHE) so runs never see stale artefacts."""

from __future__ import annotations

import os

import pytest

# Tiny models gain little from intra-op threads, and two threads on a 2-core machine whose other core is busy
# run 10x slower than one (seen: 104 s vs 9 s for one training test). Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:
    pass


def pytest_runtest_setup(item):
    """Tell tests/two_process.py's `launch` the running test's xdist group: under pytest-xdist it refuses to start
    2 processes from a test outside the 2-process group."""
    marker = item.get_closest_marker("xdist_group")
    group = marker and (marker.kwargs.get("name") or (marker.args and marker.args[0]))
    os.environ["TRL_MTP_TEST_XDIST_GROUP"] = str(group or "")


@pytest.fixture(scope="session", autouse=True)
def trl_mtp_cache(tmp_path_factory):
    """A fresh cache root for the session (subprocesses inherit it through the environment)."""
    path = tmp_path_factory.mktemp("trl_mtp_cache")
    old = os.environ.get("TRL_MTP_CACHE")
    os.environ["TRL_MTP_CACHE"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield path
    if old is None:
        os.environ.pop("TRL_MTP_CACHE", None)
    else:
        os.environ["TRL_MTP_CACHE"] = old


@pytest.fixture(scope="session")
def tokenizer(trl_mtp_cache):
    """The embedded tokenizer, built once per session into the session cache."""
    from trl_mtp.embedded.tokenizer import get_tokenizer

    return get_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """`tiny_model(preset="tiny-llama", seed=0)`: a fresh randomly initialised preset model on the embedded
    tokenizer (session-scoped: the factory holds nothing, so module- and session-scoped fixtures can use it)."""
    from trl_mtp.embedded.presets import build_model

    def make(preset: str = "tiny-llama", seed: int = 0):
        return build_model(preset, len(tokenizer), tokenizer=tokenizer, seed=seed)

    return make


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory, tokenizer) -> dict:
    """{"base": a tiny Llama saved as a model folder, "mtp": the same with sequential heads (D=2) saved as an MTP
    checkpoint}, each with the embedded tokenizer: what a user passes as `--model` or to `from_pretrained`."""
    from trl_mtp import MTPConfig, MTPForCausalLM
    from trl_mtp.embedded.presets import build_model

    root = tmp_path_factory.mktemp("model-folders")
    base = build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer)
    base.save_pretrained(root / "base")
    MTPForCausalLM.from_base(base, MTPConfig(head_type="sequential", num_mtp_heads=2)).save_pretrained(root / "mtp")
    for name in ("base", "mtp"):
        tokenizer.save_pretrained(root / name)
    return {"base": root / "base", "mtp": root / "mtp"}
