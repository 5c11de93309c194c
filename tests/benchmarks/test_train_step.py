"""The train-step benchmark (`trl-mtp bench train-step`) on a tiny base: every variant runs and NTP is the unit of
the ratios; the timed MTP step is the full MTP loss (its backward reaches every head); bad settings are one line."""

from __future__ import annotations

import json

import pytest
import torch

from trl_mtp.benchmarks import train_step

TINY = ["--preset", "tiny-llama", "--vocab", "64", "--seq-len", "16", "--hidden", "16", "--layers", "1"]


def test_every_variant_runs_and_ntp_is_the_unit(tmp_path):
    out = tmp_path / "train_step.json"
    argv = [*TINY, "--families", "blockwise,sequential", "--depths", "1,2", "--repeats", "1", "--no-memory"]
    assert train_step.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = [(r["family"], r["num_mtp_heads"]) for r in result["rows"]]
    assert rows == [("ntp", 0), ("blockwise", 1), ("blockwise", 2), ("sequential", 1), ("sequential", 2)]
    assert result["rows"][0]["time_ratio"] == 1.0
    assert all(r["step_s"] > 0 and "memory_ratio" not in r for r in result["rows"])
    assert (result["hidden"], result["layers"]) == (16, 1)


def test_the_timed_mtp_step_trains_every_head():
    args = train_step.parse_args(TINY)
    ids = torch.randint(0, args.vocab, (1, args.seq_len), generator=torch.Generator().manual_seed(0))
    step, model = train_step.make_step(train_step.build_base(args), "parallel:2")
    step(ids)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())
    # main() keeps one wrapper's capture hooks installed at a time: a step timed without them would not be an MTP step
    model.trunk.remove_hooks()
    with pytest.raises(RuntimeError, match="captured trunk hidden"):
        step(ids)


@pytest.mark.parametrize(
    "argv, named",
    [(["--depths", "1,0"], "--depths"), (["--families", "nope"], "nope"), (["--seq-len", "0"], "--seq-len")],
)
def test_bad_settings_are_named(argv, named):
    with pytest.raises(ValueError, match=named):
        train_step.parse_args(argv)
