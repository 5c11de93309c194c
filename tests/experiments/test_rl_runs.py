"""The RL experiments' run function: pooled speculative acceptance, and a short PPO and GRPO run end to end."""

from __future__ import annotations

import pytest
import torch

from trl_mtp import MTPConfig, MTPForCausalLM
from trl_mtp.experiments.rl_runs import run_rl, task_acceptance

PROMPTS = ["copy:1,2,3=", "copy:4,5,6,7,8=", "sort:9,1="]


@pytest.fixture
def mtp_model(tiny_model):
    base = tiny_model()
    return MTPForCausalLM.from_base(base, MTPConfig(head_type="sequential", num_mtp_heads=2)).eval()


def test_task_acceptance_pools_rounds_over_prompts_and_batches(mtp_model, tokenizer):
    padding_side = tokenizer.padding_side
    one_by_one = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            _, stats = mtp_model.speculative_generate(
                ids, max_new_tokens=10, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
            )
        one_by_one.append([k for round_ in stats["accepted_per_round"] for k in round_ if k >= 0])
        # a single prompt reproduces speculative_generate's own statistic
        alone = task_acceptance(mtp_model, tokenizer, [prompt], max_new_tokens=10)
        assert alone["mean_accepted_length"] == pytest.approx(stats["mean_accepted_length"])
        assert alone["acceptance_by_position"] == pytest.approx(stats["acceptance_by_position"])
    pooled = [k for ks in one_by_one for k in ks]
    expected = (sum(k + 1 for k in pooled) + len(PROMPTS)) / (len(pooled) + len(PROMPTS))
    for batch_size in (1, 2, 3):  # batching (left padding) changes nothing: greedy drafts and checks are per row
        got = task_acceptance(mtp_model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=batch_size)
        assert got["mean_accepted_length"] == pytest.approx(expected, abs=1e-6)
        assert got["acceptance_by_position"][0] == pytest.approx(sum(k > 0 for k in pooled) / len(pooled), abs=1e-6)
    assert tokenizer.padding_side == padding_side  # restored


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_run_rl_trains_scores_and_stores(algorithm, mtp_model, tokenizer, tmp_path):
    start = tmp_path / "start"
    mtp_model.save_pretrained(start)
    tokenizer.save_pretrained(start)
    batch = {
        "ppo": {"per_device_train_batch_size": 4},
        "grpo": {"per_device_train_batch_size": 4, "num_generations": 4, "generation_batch_size": 4},
    }[algorithm]
    result = run_rl(
        start,
        tmp_path / "run",
        algorithm=algorithm,
        task_name="copy",
        task_params={"length": 2, "max_value": 10},
        seed=0,
        steps=2,
        n_train=16,
        eval_n=6,
        max_new_tokens=6,
        mtp_lambda=0.3,
        **batch,
    )
    assert len(result["scores"]) == 2 and len(result["correct"]) == 6
    assert 1.0 <= result["accept_before"] <= 3.0 and 1.0 <= result["accept_after"] <= 3.0
    assert len(result["accept_by_position_after"]) == 2
    assert result["metrics"]["mtp/lambda"] == pytest.approx(0.3)
    assert (tmp_path / "run" / "result.json").is_file()


def test_run_rl_rejects_an_unknown_algorithm(tmp_path):
    with pytest.raises(ValueError, match="algorithm='a2c'"):
        run_rl(tmp_path, tmp_path / "run", algorithm="a2c", task_name="copy", task_params={}, seed=0, steps=1)
