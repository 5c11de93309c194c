"""`trl_mtp.diagnostics.tree_rounds`: the figures it reports, on a tiny model with fresh heads (the trained models
are the benchmark's, too slow to train here), checked against counts made outside it: the base's forwards (a
prefill per prompt, then one per verify round) and the new tokens in the outputs."""

from __future__ import annotations

import json

from decoding_models import PAD, make_model

from trl_mtp.diagnostics.tree_rounds import METHODS, round_figures

DEPTHS, MAX_NEW_TOKENS = 4, 12
PROMPTS = [[5, 9, 14, 3, 5, 9], [7, 7, 2, 40, 11]]


def figures_agree(figures: dict, forwards: int) -> bool:
    """Rounds = the base's forwards less the prefills; tokens per round x rounds = the tokens the rounds committed:
    the new tokens less the prefills' one each, plus at most D + 1 per prompt cut from its last round at
    max_new_tokens (no EOS here)."""
    rounds = forwards - len(PROMPTS)
    committed = sum(len(out) - len(prompt) - 1 for out, prompt in zip(figures["outputs"], PROMPTS))
    uncut = figures["tokens_per_round"] * rounds
    return sum(figures["accepted_depth"].values()) == rounds and committed <= uncut <= committed + len(PROMPTS) * (
        DEPTHS + 1
    )


def test_round_figures_chain_and_tree():
    model = make_model("blockwise", depths=DEPTHS, perturb=0.3)
    forwards = [0]
    model.base_model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    figures = {}
    for name in ("chain", "tree-9"):
        forwards[0] = 0
        figures[name] = round_figures(model, PROMPTS, MAX_NEW_TOKENS, METHODS[name], PAD)
        assert figures_agree(figures[name], forwards[0])
        # broken variants: the prefill counted as a round, or a round's own token left out
        prefill_counted = dict(figures[name]["accepted_depth"])
        prefill_counted[0] = prefill_counted.get(0, 0) + len(PROMPTS)
        assert not figures_agree(dict(figures[name], accepted_depth=prefill_counted), forwards[0])
        no_own_token = dict(figures[name], tokens_per_round=figures[name]["tokens_per_round"] - 1)
        assert not figures_agree(no_own_token, forwards[0])
    assert figures["tree-9"]["outputs"] == figures["chain"]["outputs"]  # greedy: the same text
    assert figures["chain"]["nodes_per_round"] <= DEPTHS and DEPTHS < figures["tree-9"]["nodes_per_round"] <= 9


def test_sampling_passes_top_k_50(monkeypatch):
    """--temperature's help says top_k 50: the decodes get it whatever the model's generation config holds."""
    model = make_model("blockwise", depths=DEPTHS)
    calls = []
    decode = model.speculative_generate
    monkeypatch.setattr(model, "speculative_generate", lambda *a, **kw: calls.append(kw) or decode(*a, **kw))
    round_figures(model, PROMPTS[:1], 4, None, PAD, temperature=0.7)
    assert calls and all(kw["top_k"] == 50 and kw["temperature"] == 0.7 and kw["do_sample"] for kw in calls)


def test_json_output(monkeypatch, tmp_path):
    import trl_mtp.benchmarks.decode_models as decode_models
    import trl_mtp.diagnostics.tree_rounds as tree_rounds

    calls = []
    monkeypatch.setattr(decode_models, "trained_models", lambda **kw: calls.append(kw) or {})
    assert tree_rounds.main(["--families", "medusa", "--json", str(tmp_path / "f.json")]) == 0
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["arguments"]["families"] == ["medusa"] and report["figures"] == {}
