"""MTP variants of TRL's GRPO, RLOO and DPO: each trains, logs mtp/*, and puts the MTP loss where it belongs."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from small_runs import SMALL_RUN

from trl_mtp import MTPDPOConfig, MTPDPOTrainer, MTPGRPOConfig, MTPGRPOTrainer, MTPRLOOConfig, MTPRLOOTrainer
from trl_mtp.embedded.tasks.registry import get_task

COMMON = {**SMALL_RUN, "max_steps": 2, "per_device_train_batch_size": 4}
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
    trainer = trainer_cls(
        str(model_dir), reward_funcs=task.reward, args=args, train_dataset=task.train(16), processing_class=tokenizer
    )
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


def preference_dataset(n: int = 16) -> Dataset:
    task = get_task("sort", length=3, max_value=9)
    rows = []
    for problem in task.problems("train", n):
        wrong = ",".join(reversed(problem.answer.split(",")))
        rows.append({"prompt": problem.prompt, "chosen": problem.answer, "rejected": wrong + "0"})
    return Dataset.from_list(rows)


def first_token_parity(prompts, completions, completion_ids, **kwargs):
    """A reward an untrained policy gets half the time: the advantages vary, so the RL loss moves the policy."""
    return [float(ids[0] % 2) for ids in completion_ids]


def policy_weights(trainer) -> dict:
    return {k: v for k, v in params(trainer.mtp_model.base_model).items() if "mtp_heads" not in k}


@pytest.mark.parametrize(
    "trainer_cls, config_cls",
    [(MTPGRPOTrainer, MTPGRPOConfig), (MTPRLOOTrainer, MTPRLOOConfig), (MTPDPOTrainer, MTPDPOConfig)],
)
def test_decoupled_mtp_leaves_the_policy_to_the_rl_loss(
    trainer_cls, config_cls, tiny_model, tokenizer, tmp_path, monkeypatch
):
    """Decoupled: with a loss that moves the policy (a reward that varies; DPO's preference loss), the policy ends
    bit for bit the same with mtp_lambda 0 and 1, clipping on (max_grad_norm 1). The former version of this test ran
    GRPO on a reward that was 0 everywhere, so the policy never moved; one global clip norm over heads and policy
    (restored below) now fails it."""
    tiny_model().save_pretrained(tmp_path / "base")  # a path: DPO and RLOO build their reference model from it
    on_policy = config_cls is not MTPDPOConfig
    dataset = get_task("copy", length=2, max_value=9).train(16) if on_policy else preference_dataset()

    def run(mtp_lambda: float) -> dict:
        args = config_cls(
            output_dir=str(tmp_path / "run"),
            mode="decoupled",
            mtp_lambda=mtp_lambda,
            **COMMON,
            **(ON_POLICY if on_policy else {}),
        )
        kwargs = dict(reward_funcs=first_token_parity) if on_policy else {}
        trainer = trainer_cls(
            str(tmp_path / "base"), args=args, train_dataset=dataset, processing_class=tokenizer, **kwargs
        )
        trainer.train()
        return policy_weights(trainer)

    initial, without, with_mtp = params(tiny_model()), run(0.0), run(1.0)
    assert changed(initial, without), "the RL loss must move the policy for this test to mean anything"
    assert not changed(without, with_mtp)
    monkeypatch.setattr(
        trainer_cls,
        "_clip_grad_norm",
        lambda self, model: self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm),
    )  # one norm over heads and policy
    assert changed(without, run(1.0))


def test_dpo_scores_the_heads_on_chosen_only(tiny_model, tokenizer, tmp_path):
    args = MTPDPOConfig(output_dir=str(tmp_path), **COMMON)
    tiny_model().save_pretrained(tmp_path / "base")  # a path: DPO builds its reference model from it
    trainer = MTPDPOTrainer(
        str(tmp_path / "base"), args=args, train_dataset=preference_dataset(), processing_class=tokenizer
    )
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
    trainer = MTPDPOTrainer(
        tiny_model(),
        args=args,
        train_dataset=preference_dataset(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    grads = []
    original = trainer.mtp_model.compute_mtp_loss
    trainer.mtp_model.compute_mtp_loss = lambda *a, **kw: (
        grads.append(trainer.mtp_model.trunk.hidden.requires_grad),
        original(*a, **kw),
    )[1]
    heads_before = params(trainer.mtp_model.heads)
    trainer.train()
    assert grads and all(grads)
    assert changed(heads_before, params(trainer.mtp_model.heads))
