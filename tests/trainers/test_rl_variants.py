"""MTP variants of TRL's GRPO, RLOO and DPO: each trains, logs mtp/*, and puts the MTP loss where it belongs."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from trl_mtp import MTPDPOConfig, MTPDPOTrainer, MTPGRPOConfig, MTPGRPOTrainer, MTPRLOOConfig, MTPRLOOTrainer
from trl_mtp.tasks.registry import get_task

COMMON = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, report_to=[],
              activation_checkpointing=False, save_strategy="no", dataloader_pin_memory=False, num_mtp_heads=2,
              seed=0, disable_tqdm=True)
ON_POLICY = dict(num_generations=4, max_completion_length=8, generation_batch_size=4)


def logged(trainer):
    return [h for h in trainer.state.log_history if "train_runtime" not in h]


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("trainer_cls, config_cls", [(MTPGRPOTrainer, MTPGRPOConfig), (MTPRLOOTrainer, MTPRLOOConfig)])
@pytest.mark.parametrize("mode", ["decoupled", "coupled"])
def test_on_policy_variants(trainer_cls, config_cls, mode, tiny_model, tokenizer, tmp_path):
    task = get_task("copy", length=2, max_value=9)
    args = config_cls(output_dir=str(tmp_path), mode=mode, **COMMON, **ON_POLICY)
    assert config_cls(output_dir=str(tmp_path)).mode == "decoupled"  # RL default: the policy is driven by RL alone
    model_dir = tmp_path / "base"  # a path: RLOO's default beta > 0 builds its reference model from it
    tiny_model().save_pretrained(model_dir)
    trainer = trainer_cls(str(model_dir), reward_funcs=task.reward, args=args, train_dataset=task.train(16),
                          processing_class=tokenizer)
    heads_before, trunk_before = params(trainer.mtp_model.heads), params(trainer.mtp_model.base_model)
    trainer.train()
    logs = logged(trainer)
    assert all(math.isfinite(h["mtp/loss_depth_2"]) and "mtp/acc_depth_1" in h for h in logs)
    assert changed(heads_before, params(trainer.mtp_model.heads)), "heads did not learn"
    # an untrained policy never copies: the task reward is 0 everywhere, so at the first step every advantage is 0
    # (and with the trunk unchanged, RLOO's KL-shaped reward stays 0 too): only the MTP loss can move the trunk
    assert all(h["reward"] == 0.0 for h in logs)
    trunk_moved = [k for k in changed(trunk_before, params(trainer.mtp_model.base_model)) if "mtp_heads" not in k]
    assert bool(trunk_moved) == (mode == "coupled")


def test_decoupled_mtp_leaves_the_policy_to_the_rl_loss(tiny_model, tokenizer, tmp_path):
    """Decoupled: the policy after an update is the same whatever the MTP weight."""
    task = get_task("copy", length=2, max_value=9)
    policies = []
    for mtp_lambda in (0.0, 5.0):
        args = MTPGRPOConfig(output_dir=str(tmp_path / str(mtp_lambda)), mtp_lambda=mtp_lambda, **COMMON, **ON_POLICY)
        trainer = MTPGRPOTrainer(tiny_model(), reward_funcs=task.reward, args=args, train_dataset=task.train(16),
                                 processing_class=tokenizer)
        trainer.train()
        policies.append({k: v for k, v in params(trainer.mtp_model.base_model).items() if "mtp_heads" not in k})
    for k in policies[0]:
        torch.testing.assert_close(policies[0][k], policies[1][k], rtol=0, atol=1e-6, msg=k)


def preference_dataset(n: int = 16) -> Dataset:
    task = get_task("sort", length=3, max_value=9)
    rows = []
    for problem in task.problems("train", n):
        wrong = ",".join(reversed(problem.answer.split(",")))
        rows.append({"prompt": problem.prompt, "chosen": problem.answer, "rejected": wrong + "0"})
    return Dataset.from_list(rows)


def test_dpo_scores_the_heads_on_chosen_only(tiny_model, tokenizer, tmp_path):
    args = MTPDPOConfig(output_dir=str(tmp_path), **COMMON)
    tiny_model().save_pretrained(tmp_path / "base")  # a path: DPO builds its reference model from it
    trainer = MTPDPOTrainer(str(tmp_path / "base"), args=args, train_dataset=preference_dataset(),
                            processing_class=tokenizer)
    seen = []
    original = trainer.mtp_model.compute_mtp_loss

    def spy(input_ids, labels, *a, **kw):
        seen.append((input_ids.clone(), labels.clone(), trainer.mtp_model.trunk.hidden.requires_grad))
        return original(input_ids, labels, *a, **kw)

    trainer.mtp_model.compute_mtp_loss = spy
    trainer.train()
    input_ids, labels, hidden_had_grad = seen[0]
    half = input_ids.size(0) // 2
    assert (labels[half:] == -100).all() and (labels[:half] != -100).any()
    assert hidden_had_grad, "the heads must read the policy forward, not the no-grad reference forward"
    assert all(math.isfinite(h["mtp/loss_depth_1"]) for h in logged(trainer))


def test_dpo_with_lora_reference_keeps_the_policy_capture(tiny_model, tokenizer, tmp_path):
    """With PEFT and no ref model, TRL runs the reference through the same model after the policy forward."""
    from peft import LoraConfig

    args = MTPDPOConfig(output_dir=str(tmp_path), **COMMON)
    trainer = MTPDPOTrainer(tiny_model(), args=args, train_dataset=preference_dataset(), processing_class=tokenizer,
                            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    grads = []
    original = trainer.mtp_model.compute_mtp_loss
    trainer.mtp_model.compute_mtp_loss = lambda *a, **kw: (grads.append(trainer.mtp_model.trunk.hidden.requires_grad),
                                                           original(*a, **kw))[1]
    heads_before = params(trainer.mtp_model.heads)
    trainer.train()
    assert grads and all(grads)
    assert changed(heads_before, params(trainer.mtp_model.heads))
