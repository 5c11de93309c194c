"""`trl_mtp.diagnostics.tree_rounds`: the figures it reports, on a tiny model with fresh heads (the trained models
are the benchmark's, too slow to train here)."""

from __future__ import annotations

from decoding_models import PAD, make_model

from trl_mtp.diagnostics.tree_rounds import METHODS, round_figures


def test_round_figures_chain_and_tree():
    model = make_model("blockwise", depths=4, perturb=0.3)
    prompts = [[5, 9, 14, 3, 5, 9], [7, 7, 2, 40, 11]]
    chain = round_figures(model, prompts, 12, None, PAD)
    tree = round_figures(model, prompts, 12, METHODS["tree-9"], PAD)
    assert tree["outputs"] == chain["outputs"]  # greedy: the same text
    for figures in (chain, tree):
        rounds = sum(figures["accepted_depth"].values())
        # tokens per round = 1 + mean accepted depth, from the same rounds
        mean_depth = sum(k * n for k, n in figures["accepted_depth"].items()) / rounds
        assert abs(figures["tokens_per_round"] - 1 - mean_depth) < 1e-12
    assert chain["nodes_per_round"] <= 4 and 4 < tree["nodes_per_round"] <= 9
