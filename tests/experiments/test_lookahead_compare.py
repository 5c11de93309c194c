"""The lookahead experiment's run function: every method scores held-out items within its budget."""

from __future__ import annotations

import pytest

from trl_mtp import MTPConfig, MTPForCausalLM
from trl_mtp.experiments.lookahead_compare import METHODS, run_method


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer, tiny_model):
    path = tmp_path_factory.mktemp("lookahead-model")
    base = tiny_model()
    MTPForCausalLM.from_base(base, MTPConfig(head_type="sequential", num_mtp_heads=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("method", METHODS)
def test_each_method_scores_items_within_budget(method, model_dir, tmp_path):
    result = run_method(
        model_dir, tmp_path / method, method=method, seed=1, task_name="copy", n=3, max_forwards=8, max_new_tokens=6
    )
    assert len(result["correct"]) == 3 and set(result["correct"]) <= {0.0, 1.0}
    if method not in ("greedy", "sample"):  # the references are unbounded (greedy) or one full sample
        assert max(result["forwards"]) <= 8
    assert result["forwards_per_item"] == pytest.approx(sum(result["forwards"]) / 3)


def test_unknown_method_is_named(model_dir, tmp_path):
    with pytest.raises(ValueError, match="method='mcts'"):
        run_method(model_dir, tmp_path / "x", method="mcts", seed=0)
