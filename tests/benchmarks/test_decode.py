"""The decode benchmark's statistics (`trl_mtp.benchmarks.decode`): shuffled orders, quartiles, paired ratios, and the
in-loop timing that gives the ceiling. Timings themselves are never asserted."""

from __future__ import annotations

import pytest
import torch

import trl_mtp.benchmarks.decode as bench
from trl_mtp.config import MTPConfig
from trl_mtp.decoding import DRAFTERS, ParallelDrafter, left_pad
from trl_mtp.embedded.presets import build_model
from trl_mtp.model import MTPForCausalLM


def test_orders_are_fresh_shuffles_of_every_method():
    methods = ["greedy", "loop-k0", "mtp-a", "mtp-b", "mtp-c"]
    orders = bench.shuffled_orders(methods, 6, seed=0)
    assert len(orders) == 6 and all(sorted(o) == sorted(methods) for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # not one order repeated
    assert orders == bench.shuffled_orders(methods, 6, seed=0)  # seeded
    assert orders != bench.shuffled_orders(methods, 6, seed=1)


def test_quartiles_by_hand():
    assert bench.quartiles([4.0, 1.0, 3.0, 2.0, 5.0]) == (2.0, 3.0, 4.0)
    assert bench.quartiles([1.0, 2.0, 3.0, 4.0]) == (1.75, 2.5, 3.25)  # interpolated between order statistics
    assert bench.quartiles([7.0]) == (7.0, 7.0, 7.0)


def test_ratio_summary_pairs_repetitions():
    """Per-repetition ratios, not a ratio of totals: a slow repetition (load) slows both and cancels."""
    baseline = [2.0, 4.0, 2.0, 2.0, 10.0]
    method = [1.0, 2.0, 1.0, 1.0, 5.0]  # twice as fast in every repetition
    summary = bench.ratio_summary(baseline, method)
    assert summary == {"median": 2.0, "q1": 2.0, "q3": 2.0, "iqr": 0.0}
    spread = bench.ratio_summary([3.0, 2.0, 1.0, 4.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert (spread["q1"], spread["median"], spread["q3"], spread["iqr"]) == (2.0, 2.0, 3.0, 1.0)
    assert sum([3.0, 2.0, 1.0, 4.0, 2.0]) / 5.0 == 2.4  # the ratio of totals, which the median is not
    with pytest.raises(ValueError, match="paired repetitions, got 2 and 3"):
        bench.ratio_summary([1.0, 2.0], [1.0, 2.0, 3.0])


def _model(family: str):
    base = build_model("tiny-llama", 96, seed=0, num_hidden_layers=2)
    return MTPForCausalLM(base, MTPConfig(head_type=family, num_mtp_heads=3)).eval()


def test_in_loop_times_cover_forwards_and_drafting_and_restore_the_methods():
    model = _model("parallel")
    base = model.base_model
    batches = [left_pad([[5, 6, 7, 8], [9, 10, 11]], 0)]
    forward, propose = base.forward, ParallelDrafter.propose
    calls = []
    original = base.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    base.forward = counting
    try:
        totals = bench.in_loop_times("mtp-parallel", {"mtp-parallel": model}, base, batches, 8, 0)
        assert calls  # base forwards ran through the timer
        assert totals["forward_s"] > 0 and totals["drafting_s"] > 0
        k0 = bench.in_loop_times("loop-k0", {"mtp-parallel": model}, base, batches, 8, 0)
        assert k0["forward_s"] > 0
    finally:
        del base.forward
    assert base.forward == forward and ParallelDrafter.propose is propose  # originals back
    assert all("timed" not in getattr(d.propose, "__name__", "") for d in DRAFTERS.values())


def test_in_loop_forward_time_of_every_head_set():
    """Each family's model has a base of its own: a method's forward time is its own base's (the first base alone was
    timed before, so every other family got 0 s of forwards and a ceiling of the k = 0 loop's forwards over its
    drafting alone)."""
    models = {"mtp-blockwise": _model("blockwise"), "mtp-medusa": _model("medusa")}
    base = models["mtp-blockwise"].base_model
    batches = [left_pad([[5, 6, 7, 8]], 0)]
    assert models["mtp-medusa"].base_model is not base
    totals = bench.in_loop_times("mtp-medusa", models, base, batches, 6, 0)
    assert totals["forward_s"] > 0 and totals["drafting_s"] > 0
    assert totals["wall_s"] > totals["forward_s"] + totals["drafting_s"]  # the pass's own time holds both
    assert "forward" not in vars(base) and "forward" not in vars(models["mtp-medusa"].base_model)  # restored


def test_loop_k0_is_plain_decoding_with_the_same_output():
    model = _model("blockwise")
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10, 11]], 0)
    greedy, _ = bench.decode("greedy", {"mtp-blockwise": model}, model.base_model, ids, mask, 6, 0)
    k0, stats = bench.decode("loop-k0", {"mtp-blockwise": model}, model.base_model, ids, mask, 6, 0)
    assert torch.equal(k0, greedy)
    assert stats["forwards"] == 6 and stats["drafted"] == 0


@pytest.mark.slow
def test_quick_bench_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--families", "blockwise,sequential", "--json", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())["batches"]["1"]
    assert set(rows) == {"greedy", "loop-k0", "prompt_lookup", "mtp-blockwise", "mtp-sequential"}
    assert all(r["identical_to_greedy"] for r in rows.values())
    assert len(rows["greedy"]["seconds"]) == 2 and rows["mtp-blockwise"]["ceiling_vs_loop_k0"] > 0


def test_batch_rows_with_a_reference_engine(monkeypatch, capsys):
    """One batch size end to end on tiny models, with a second decoding module run side by side as '@ref': every
    method gets paired speed-ups over both baselines, the speculative ones a ceiling, all outputs equal greedy's."""
    import argparse

    import trl_mtp.decoding

    models = {"mtp-blockwise": _model("blockwise"), "mtp-sequential": _model("sequential")}
    # the same base weights under every head set (seeded), as the benchmark's trained models
    monkeypatch.setitem(bench.ENGINES, bench.REFERENCE, bench.load_engine(trl_mtp.decoding.__file__))
    batches = [left_pad([[5, 6, 7, 8], [9, 10, 11]], 0), left_pad([[12, 13, 14], [15, 16, 17, 18]], 0)]
    methods = ["greedy", "loop-k0", "mtp-blockwise", "mtp-sequential", "loop-k0@ref", "mtp-sequential@ref"]
    args = argparse.Namespace(repeats=3, seed=0, max_new_tokens=6)
    rows = bench.bench_batch_size(methods, models, models["mtp-blockwise"].base_model, batches, args, 0)
    assert set(rows) == set(methods)
    assert all(r["identical_to_greedy"] and len(r["seconds"]) == 3 for r in rows.values())
    assert rows["greedy"]["speedup_vs_generate"]["median"] == 1.0
    for m in ("mtp-blockwise", "mtp-sequential", "mtp-sequential@ref"):
        assert rows[m]["ceiling_vs_loop_k0"] > 0 and "fraction_of_ceiling" in rows[m]
        assert "mean_accepted_length" in rows[m]
    assert "ceiling_vs_loop_k0" not in rows["loop-k0@ref"]
    bench.print_table({"num_depths": 3, "batches": {"2": rows}})
    assert "mtp-sequential@ref" in capsys.readouterr().out


def test_fixed_and_adaptive_draft_methods():
    """`mtp-<family>-k<j>` drafts j tokens a round; `mtp-<family>-adaptive` keeps one planner across calls (reset per
    batch size by clearing `PLANNERS`); both give greedy's output."""
    model = _model("blockwise")
    models = {"mtp-blockwise": model}
    assert bench.speculative_settings("loop-k0", models) == (model, {"num_draft_tokens": 0})
    assert bench.speculative_settings("mtp-blockwise", models) == (model, {})
    assert bench.speculative_settings("mtp-blockwise-k2", models) == (model, {"num_draft_tokens": 2})
    bench.PLANNERS.clear()
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10, 11]], 0)
    greedy, _ = bench.decode("greedy", models, model.base_model, ids, mask, 8, 0)
    out, stats = bench.decode("mtp-blockwise-k2", models, model.base_model, ids, mask, 8, 0)
    assert torch.equal(out, greedy) and set(stats["draft_tokens_per_round"]) <= {2}
    rounds = []
    for _ in range(2):
        out, stats = bench.decode("mtp-blockwise-adaptive", models, model.base_model, ids, mask, 8, 0)
        assert torch.equal(out, greedy)
        rounds.append(len(stats["draft_tokens_per_round"]))
    assert bench.PLANNERS["mtp-blockwise-adaptive"].rounds == sum(rounds)  # one planner over both calls
    bench.PLANNERS.clear()
