"""MTPPPOTrainer: scoring and padding, metrics, the rollout hook, MTP modes, references, save/resume, learning, DDP."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaForSequenceClassification
from two_process import TWO_PROCESS_GROUP, launch

from trl_mtp import MTPForCausalLM, MTPPPOConfig, MTPPPOTrainer
from trl_mtp.embedded.presets import build_config
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.trainers import ppo_trainer

PPO_METRICS = (
    "objective/kl",
    "objective/entropy",
    "objective/rlhf_reward",
    "objective/scores",
    "objective/non_score_reward",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "val/ratio",
    "val/ratio_var",
    "val/num_eos_tokens",
    "policy/entropy_avg",
    "lr",
    "episode",
    "val/explained_variance",
)
MTP_METRICS = (
    "mtp/loss_depth_1",
    "mtp/acc_depth_1",
    "mtp/entropy_depth_1",
    "mtp/loss_depth_2",
    "mtp/loss",
    "mtp/lambda",
    "mtp/window",
)


def zero_reward(prompts, completions, **kwargs):
    return [0.0] * len(prompts)


def first_token_parity(prompts, completions, completion_ids, **kwargs):
    """A reward a random model gets half the time (so advantages are not all zero)."""
    return [float(ids[0] % 2) for ids in completion_ids]


def digit_fraction(prompts, completions, **kwargs):
    """Easy to learn from a base that writes digits and commas: the share of digits in the completion."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


@pytest.fixture(scope="module")
def prompts():
    return get_task("copy", length=3).train(32)


def policy_state(trainer) -> dict[str, torch.Tensor]:
    """The policy's own weights (no heads, no critic)."""
    return {
        k: v.detach().clone()
        for k, v in trainer.mtp_model.base_model.state_dict().items()
        if not k.startswith("mtp_heads.")
    }


class ScriptedPPOTrainer(MTPPPOTrainer):
    """Rollouts replaced by fixed responses: the `generate_rollouts` hook at work."""

    scripted: torch.Tensor

    def generate_rollouts(self, queries, query_mask):
        return self.scripted[: queries.size(0)].to(queries.device)


# -- scoring, padding, penalty --------------------------------------------------------------------------------------
def test_truncation_penalty_and_score_position(tiny_model, tokenizer, prompts, ppo_args):
    """The stop token (not the EOS) truncates and decides the missing-EOS penalty; the score sits on the last real
    token; reward functions see the truncated completion."""
    stop, eos = tokenizer.convert_tokens_to_ids("7"), tokenizer.eos_token_id
    seen = []

    def one(prompts, completions, completion_ids, **kwargs):
        seen.extend(completion_ids)
        return [1.0] * len(prompts)

    args = ppo_args(
        stop_token_id=stop, missing_eos_penalty=0.5, kl_coef=0.0, per_device_train_batch_size=2, num_mini_batches=1
    )
    trainer = ScriptedPPOTrainer(
        tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=one
    )
    a, b = tokenizer.convert_tokens_to_ids("3"), tokenizer.convert_tokens_to_ids(",")
    trainer.scripted = torch.tensor([[a, stop, b, b], [a, eos, b, a]])
    rollouts = trainer.make_rollouts(0)
    assert seen == [[a, stop], [a, eos, b, a]]
    assert rollouts.responses[0].tolist() == [a, stop, tokenizer.pad_token_id, tokenizer.pad_token_id]
    assert rollouts.mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert rollouts.scores.tolist() == [1.0, 0.5]  # row 1 has an EOS but no stop token: penalised
    assert rollouts.rewards.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]
    assert (rollouts.advantages[~rollouts.mask] == 0).all() and (rollouts.values[~rollouts.mask] == 0).all()


def tiny_classifier(tokenizer, seed: int):
    config = build_config("tiny-llama", len(tokenizer), tokenizer=tokenizer, num_labels=1, num_hidden_layers=2)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


def test_reward_model_score_is_independent_of_padding(tiny_model, tokenizer, ppo_args):
    """Prompts of different lengths are left-padded, responses right-padded after the stop token: each row's score
    equals the reward model's own score of that row alone, unpadded."""
    dataset = get_task("copy", length=1).train(1).select([0] * 2)
    dataset = dataset.map(
        lambda row, i: {"prompt": row["prompt"] if i == 0 else "copy:1,2,3,4,5,6="}, with_indices=True
    )
    reward_model = tiny_classifier(tokenizer, seed=1)
    args = ppo_args(per_device_train_batch_size=2, num_mini_batches=1)
    trainer = ScriptedPPOTrainer(
        tiny_model(), args, train_dataset=dataset, processing_class=tokenizer, reward_model=reward_model
    )
    eos, a = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("3")
    trainer.scripted = torch.tensor([[a, eos, a, a], [a, a, a, a]])
    rollouts = trainer.make_rollouts(0)
    for row in range(2):
        ids = rollouts.query_responses[row][rollouts.attention_mask[row].bool()].unsqueeze(0)
        with torch.no_grad():
            alone = reward_model(input_ids=ids).logits[0, 0]
        torch.testing.assert_close(rollouts.scores[row], alone, atol=1e-4, rtol=1e-4)
    assert rollouts.attention_mask[0, 0] == 0  # the short prompt really was left-padded


# -- a run: metrics, ratio, MTP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logs_every_metric_and_first_ratio_is_one(temperature, tiny_model, tokenizer, prompts, ppo_args):
    """One epoch, one mini-batch: the update runs on the very policy that sampled, so ratio = 1 exactly
    (the log-probs of rollout and update agree, N+ details' sanity check), at any temperature."""
    args = ppo_args(max_steps=2, num_ppo_epochs=1, num_mini_batches=1, temperature=temperature)
    trainer = MTPPPOTrainer(
        tiny_model(),
        args,
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_funcs=[zero_reward, digit_fraction],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "objective/kl" in h]
    assert len(logs) == 2
    for name in PPO_METRICS + MTP_METRICS + ("rewards/digit_fraction/mean",):
        assert name in logs[-1] and isinstance(logs[-1][name], (int, float)), name
    assert logs[0]["val/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert logs[0]["policy/approxkl_avg"] == pytest.approx(0.0, abs=1e-7)
    assert logs[0]["policy/clipfrac_avg"] == 0.0
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is a copy of the start
    assert logs[-1]["episode"] == 2 * 4


def test_decoupled_mtp_leaves_the_policy_to_ppo(tiny_model, tokenizer, prompts, ppo_args):
    """Decoupled (the default): the policy after an update is the same with or without the MTP loss, while the
    heads learn. Coupled: the MTP loss moves the policy."""
    results = {}
    for mode, mtp_lambda in (("decoupled", 0.0), ("decoupled", 1.0), ("coupled", 1.0)):
        trainer = MTPPPOTrainer(
            tiny_model(),
            ppo_args(mode=mode, mtp_lambda=mtp_lambda),
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_funcs=first_token_parity,
        )
        heads_before = {k: v.clone() for k, v in trainer.mtp_model.heads.state_dict().items()}
        trainer.train()
        heads_after = trainer.mtp_model.heads.state_dict()
        results[mode, mtp_lambda] = (
            policy_state(trainer),
            any(not torch.equal(heads_before[k], heads_after[k]) for k in heads_before),
        )
    base, with_mtp, coupled = results["decoupled", 0.0], results["decoupled", 1.0], results["coupled", 1.0]
    initial = {k: v for k, v in tiny_model().state_dict().items()}
    assert any(not torch.equal(base[0][k], initial[k]) for k in base[0])  # PPO did move the policy
    assert all(torch.equal(base[0][k], with_mtp[0][k]) for k in base[0])
    assert with_mtp[1] and not base[1]  # heads learn only with lambda > 0
    assert any(not torch.equal(base[0][k], coupled[0][k]) for k in base[0])


@pytest.mark.parametrize("head_type", ["sequential", "parallel"])
def test_mtp_variants_train_and_log(head_type, tiny_model, tokenizer, prompts, ppo_args):
    args = ppo_args(
        head_type=head_type,
        mode="coupled",
        mtp_lambda=0.3,
        mtp_lambda_schedule="linear",
        mtp_lambda_end=0.1,
        mtp_window_schedule="forward",
        max_steps=2,
    )
    trainer = MTPPPOTrainer(
        tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "mtp/loss" in h]
    assert [h["mtp/window"] for h in logs] == [1.0, 2.0]  # forward curriculum over the 2 iterations
    assert logs[0]["mtp/lambda"] == pytest.approx(0.3) and logs[1]["mtp/lambda"] == pytest.approx(0.2)
    assert all(math.isfinite(h["mtp/loss_depth_1"]) for h in logs)


def test_speculative_rollouts_train_and_log_acceptance(tiny_model, tokenizer, prompts, ppo_args):
    args = ppo_args(speculative_rollouts=True, head_type="blockwise", num_mtp_heads=3, mode="decoupled")
    trainer = MTPPPOTrainer(
        tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "spec/mean_accepted_length" in h]
    assert len(logs) == 2
    for h in logs:
        assert 1.0 <= h["spec/mean_accepted_length"] <= 4.0
        rates = [h[f"spec/acceptance_pos_{i}"] for i in (1, 2, 3)]
        assert all(0.0 <= r <= 1.0 for r in rates) and rates == sorted(rates, reverse=True)
        assert math.isfinite(h["objective/scores"])


def test_adaptive_draft_tokens_in_rollouts(tiny_model, tokenizer, prompts, ppo_args):
    """One planner serves every rollout of the run (its rounds add up over iterations) and chooses fewer than D drafts
    in some rounds; the rollouts log drafts per round, acceptance per depth and tokens per second."""
    args = ppo_args(
        speculative_rollouts=True, adaptive_draft_tokens=True, head_type="blockwise", num_mtp_heads=3, mode="decoupled"
    )
    trainer = MTPPPOTrainer(
        tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
    )
    rounds = []
    rollout = trainer.speculative_rollout

    def counting(*a, **k):
        out = rollout(*a, **k)
        rounds.append(trainer.draft_planner.rounds)
        return out

    trainer.speculative_rollout = counting
    trainer.train()
    logs = [h for h in trainer.state.log_history if "spec/draft_tokens" in h]
    assert len(logs) == 2 and rounds == sorted(rounds) and rounds[0] > 0 and len(set(rounds)) == len(rounds)
    assert min(h["spec/draft_tokens"] for h in logs) < 3.0  # without the planner every round drafts D = 3
    for h in logs:
        assert all(0.0 <= h[f"spec/acceptance_depth_{i}"] <= 1.0 for i in (1, 2, 3))
        assert h["spec/tokens_per_s"] > 0


# -- the log-probs PPO computes are those of the sampler and of the update -----------------------------------------
def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson's chi-square test of token `counts` [V] against `probs` [V] (tokens expected fewer than `min_expected`
    times pooled in one bin): the upper tail of chi2 with bins - 1 degrees of freedom."""
    expected = probs.double() * counts.sum()
    big = expected >= min_expected
    observed = torch.cat([counts[big].double(), counts[~big].double().sum().reshape(1)])
    expected = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    statistic = ((observed - expected) ** 2 / expected).sum()
    return torch.special.gammaincc(torch.tensor((observed.numel() - 1) / 2, dtype=torch.float64), statistic / 2).item()


def peaked_model(tiny_model):
    """A tiny model peaked on a prompt token after "copy:1,2,3=" ('=': pi = 0.62 at T = 1), where a repetition penalty
    bites; its generation config holds one, as released checkpoints' often do."""
    model = tiny_model()
    with torch.no_grad():
        model.model.norm.weight.mul_(10)  # logits x 10
    model.generation_config.repetition_penalty = 1.3
    return model


def one_token_rollouts(trainer, prompt: str, n: int):
    """(n tokens sampled by the rollout sampler after `prompt`, pi [V] = softmax(logits / T) as PPO scores it)."""
    queries, query_mask = trainer.tokenize_prompts([prompt] * n)
    tokens = trainer.generate_rollouts(queries, query_mask)[:, 0]
    row = torch.cat([queries[:1], tokens[:1, None]], 1)  # one prompt, no padding
    with torch.no_grad():
        logits, _ = trainer.model(row, torch.ones_like(row))
    return tokens, torch.softmax(trainer.response_logits(logits, queries.size(1))[0, 0], -1)


@pytest.mark.parametrize("speculative", [False, True])
def test_rollouts_sample_the_distribution_ppo_scores(speculative, tiny_model, tokenizer, ppo_args, monkeypatch):
    """2000 one-token rollouts against pi = softmax(logits / T), the distribution of PPO's log-probs: a chi-square
    test passes, although the model's generation config holds a repetition penalty of 1.3. Sampled with that config
    (the former sampler, restored below), '=' with pi = 0.93 at T = 0.7 came out 25% of the time (p-value 0.0);
    speculative decoding, which now honours the model's generation config as `generate` does, fails the same way."""
    args = ppo_args(
        temperature=0.7,
        response_length=1,
        stop_token=None,
        local_rollout_forward_batch_size=2000,
        speculative_rollouts=speculative,
        head_type="blockwise",
    )
    trainer = MTPPPOTrainer(
        peaked_model(tiny_model),
        args,
        train_dataset=Dataset.from_dict({"prompt": ["copy:1,2,3="]}),
        processing_class=tokenizer,
        reward_funcs=zero_reward,
    )
    tokens, pi = one_token_rollouts(trainer, "copy:1,2,3=", 2000)
    assert pi.max() > 0.5  # peaked on '=', a prompt token
    assert chi_square_p_value(torch.bincount(tokens, minlength=pi.numel()), pi) > 1e-3
    # the former sampler: the rollout config with the model's own config left in place, to fill what it leaves unset
    monkeypatch.setattr(ppo_trainer, "sampling_only_from", lambda model, config: contextlib.nullcontext())
    tokens, pi = one_token_rollouts(trainer, "copy:1,2,3=", 2000)
    assert chi_square_p_value(torch.bincount(tokens, minlength=pi.numel()), pi) < 1e-9


def test_rollout_sampler_is_a_temperature_and_nothing_else(tiny_model):
    """`generate` fills what a passed config leaves unset from the model's generation config: inside
    `sampling_only_from` that is the rollout config itself, whose only logits processor is the temperature; a
    config with anything more is refused, and the model's own config comes back afterwards."""
    model = tiny_model()
    model.generation_config.repetition_penalty, model.generation_config.suppress_tokens = 1.3, [5]
    rollout = GenerationConfig(max_new_tokens=2, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, eos_token_id=[])
    prepared, _ = model._prepare_generation_config(rollout)
    leaked = [type(p).__name__ for p in model._get_logits_processor(prepared, input_ids_seq_length=1)]
    assert "RepetitionPenaltyLogitsProcessor" in leaked and "SuppressTokensLogitsProcessor" in leaked  # the premise
    with ppo_trainer.sampling_only_from(model, rollout):
        prepared, _ = model._prepare_generation_config(rollout)
        assert [type(p).__name__ for p in model._get_logits_processor(prepared)] == ["TemperatureLogitsWarper"]
    assert model.generation_config.repetition_penalty == 1.3
    with (
        pytest.raises(ValueError, match="TopKLogitsWarper"),
        ppo_trainer.sampling_only_from(model, GenerationConfig(do_sample=True, top_k=5)),
    ):
        pass
    assert model.generation_config.suppress_tokens == [5]


@pytest.mark.parametrize("speculative", [False, True])
def test_without_a_stop_token_rollouts_never_stop(speculative, tiny_model, tokenizer, prompts, ppo_args):
    """`stop_token=None`: both samplers run to `response_length`, whatever the model's generation config calls EOS
    (here every token: the former speculative path stopped after one token, and PPO trained on the padding)."""
    model = tiny_model()
    model.generation_config.eos_token_id = list(range(len(tokenizer)))
    args = ppo_args(
        stop_token=None,
        speculative_rollouts=speculative,
        head_type="blockwise",
        per_device_train_batch_size=8,
        num_mini_batches=1,
    )
    trainer = MTPPPOTrainer(model, args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=zero_reward)
    rollouts = trainer.make_rollouts(0)
    assert rollouts.responses.shape == (8, args.response_length) and rollouts.mask.all()
    assert (rollouts.responses != tokenizer.pad_token_id).float().mean() > 0.9  # sampled tokens, not padding


GPT2_DROPOUT = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # GPT-2's own


def first_update_stats(trainer) -> dict:
    trainer.train()
    return next(h for h in trainer.state.log_history if "val/ratio" in h)


@pytest.mark.parametrize(
    "preset, dropout, temperature",
    [
        ("tiny-gpt2", GPT2_DROPOUT, 1.0),
        ("tiny-gpt2", GPT2_DROPOUT, 0.7),
        ("tiny-llama", dict(attention_dropout=0.1), 0.7),  # applied functionally, from a float attribute
    ],
)
def test_dropout_is_off_so_the_first_ratio_is_exactly_one(preset, dropout, temperature, tokenizer, prompts, ppo_args):
    """GPT-2's dropout of 0.1: pi_old comes from eval mode and the update from train mode, so with dropout on (the
    former behaviour, `disable_dropout=False`) the first ratio was 1.047 (T = 1) / 1.086 (T = 0.7) with 10% / 15% of
    tokens clipped. With `disable_dropout` (the default) it is exactly 1 and nothing is clipped."""
    from trl_mtp.embedded.presets import build_model

    stats = {}
    for disable in (True, False):
        model = build_model(preset, len(tokenizer), tokenizer=tokenizer, **dropout)
        args = ppo_args(
            max_steps=1,
            num_ppo_epochs=1,
            num_mini_batches=1,
            temperature=temperature,
            per_device_train_batch_size=8,
            disable_dropout=disable,
        )
        stats[disable] = first_update_stats(
            MTPPPOTrainer(
                model, args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
            )
        )
    assert MTPPPOConfig(output_dir="x").disable_dropout
    assert stats[True]["val/ratio"] == 1.0 and stats[True]["policy/clipfrac_avg"] == 0.0
    assert stats[True]["policy/approxkl_avg"] == 0.0
    assert stats[False]["val/ratio"] != 1.0 and stats[False]["policy/approxkl_avg"] > 0


def dropout_rates(model) -> list[float]:
    """Every dropout probability of a model: `nn.Dropout` modules and Llama-style float `attention_dropout`."""
    return [
        m.p if isinstance(m, torch.nn.Dropout) else m.attention_dropout
        for m in model.modules()
        if isinstance(m, torch.nn.Dropout) or isinstance(getattr(m, "attention_dropout", None), float)
    ]


def test_dropout_is_off_in_reference_reward_and_value_models(tokenizer, prompts, ppo_args):
    from trl_mtp.embedded.presets import build_config, build_model

    def classifier():
        return LlamaForSequenceClassification(
            build_config(
                "tiny-llama",
                len(tokenizer),
                tokenizer=tokenizer,
                num_labels=1,
                num_hidden_layers=1,
                attention_dropout=0.1,
            )
        )

    policy = build_model("tiny-gpt2", len(tokenizer), tokenizer=tokenizer, **GPT2_DROPOUT)
    reward_model, value_model = classifier(), classifier()
    assert all(max(dropout_rates(m)) == 0.1 for m in (policy, reward_model, value_model))
    trainer = MTPPPOTrainer(
        policy,
        ppo_args(),
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_model=reward_model,
        value_model=value_model,
    )
    for model in (trainer.model, trainer.ref_model, trainer.reward_model, trainer.model.value_model):
        assert dropout_rates(model) and max(dropout_rates(model)) == 0.0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_runs_every_log_prob_in_one_precision(temperature, tiny_model, tokenizer, prompts, ppo_args, monkeypatch):
    """bf16: sampler, pi_old, pi_ref and the update all run under the same autocast, so KL to an exact copy of the
    policy is exactly 0 at step 0. Formerly only the prepared policy forward was autocast: the KL read -5.8e-4
    (T = 1) / -1.5e-3 (T = 0.7) per response, the former precision (restored below) still reads != 0."""

    def run():
        trainer = MTPPPOTrainer(
            tiny_model(),
            ppo_args(
                bf16=True, use_cpu=True, max_steps=1, num_ppo_epochs=1, num_mini_batches=1, temperature=temperature
            ),
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_funcs=first_token_parity,
        )
        autocast = []  # per forward of the policy's and the reference's trunk outside the update
        for model in (trainer.mtp_model.base_model, trainer.ref_model):
            model.register_forward_pre_hook(
                lambda m, a: autocast.append(torch.is_autocast_enabled("cpu")) if not m.training else None
            )
        return first_update_stats(trainer), autocast

    stats, autocast = run()
    assert stats["objective/kl"] == 0.0 and stats["val/ratio"] == 1.0
    assert autocast and all(autocast)  # generation, pi_old and pi_ref all under autocast
    monkeypatch.setattr(MTPPPOTrainer, "precision_context", lambda self: contextlib.nullcontext())
    stats, autocast = run()
    assert stats["objective/kl"] != 0.0 and not all(autocast)


def test_fp16_unscales_once_then_clips_each_group(tiny_model, tokenizer, prompts, ppo_args, fp16_scaler, monkeypatch):
    """fp16 (a GradScaler; accelerate has none on CPU, so it is emulated): the gradients are unscaled once and each
    group clipped on its own norm, an update bit for bit that of a run without the scaler. Clipping per group through
    `accelerator.clip_grad_norm_` (the former code, restored below) unscaled twice: "unscale_() has already been
    called on this optimizer since the last update()"."""

    def run(scaled: bool):
        trainer = MTPPPOTrainer(
            tiny_model(),
            ppo_args(max_steps=1, max_grad_norm=0.1),
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_funcs=first_token_parity,
        )
        if scaled:
            fp16_scaler(trainer.accelerator)
        trainer.train()
        return policy_state(trainer), trainer

    (plain, _), (scaled, trainer) = run(False), run(True)
    assert trainer.accelerator.scaler.get_scale() == 2.0**16  # the scaler ran and saw finite gradients
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)
    assert any(not torch.equal(plain[k], tiny_model().state_dict()[k]) for k in plain)

    def per_group(self, max_norm):
        for group in self._clip_groups():
            self.accelerator.clip_grad_norm_(group, max_norm)

    monkeypatch.setattr(MTPPPOTrainer, "clip_each_group", per_group)
    with pytest.raises(RuntimeError, match="unscale_"):
        run(True)


def test_activation_checkpointing_is_honoured(tiny_model, tokenizer, prompts, ppo_args):
    """`activation_checkpointing=True` (which `Trainer.train` applies, and PPO's own loop silently ignored): the
    decoder layers recompute their forward in the backward, so each runs twice per update micro-batch, and the
    update is the same as without."""
    runs = {}
    for checkpointing in (False, True):
        trainer = MTPPPOTrainer(
            tiny_model(),
            ppo_args(max_steps=1, activation_checkpointing=checkpointing),
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_funcs=first_token_parity,
        )
        calls = []  # training-mode calls of a linear layer inside layer 0 (the checkpoint wraps the layer's forward)
        linear = next(m for m in trainer.mtp_model.trunk.layers[0].modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda m, a, o: calls.append(m.training))  # noqa: B023 (runs in this iteration)
        trainer.train()
        runs[checkpointing] = sum(calls), policy_state(trainer), trainer.mtp_model.trunk.is_checkpointing
    assert runs[True][2] and not runs[False][2]
    assert runs[True][0] == 2 * runs[False][0] > 0
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, rtol=0, atol=1e-6, msg=k)


# -- references, critics, prompts -------------------------------------------------------------------------------------
def test_lora_reference_is_the_base_with_adapters_disabled(tiny_model, tokenizer, prompts, ppo_args):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = MTPPPOTrainer(
        tiny_model(),
        ppo_args(max_steps=2),
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_funcs=first_token_parity,
        peft_config=peft_config,
    )
    assert trainer.ref_model is None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "objective/kl" in h]
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity
    assert logs[1]["objective/kl"] != 0.0


def test_value_model_reward_model_and_conversational_prompts(tiny_model, tokenizer, ppo_args, tmp_path):
    dataset = get_task("copy", length=2).train(8, conversational=True)
    args = ppo_args(max_steps=1)
    trainer = MTPPPOTrainer(
        tiny_model(),
        args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_model=tiny_classifier(tokenizer, 1),
        value_model=tiny_classifier(tokenizer, 2),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    assert os.path.isfile(tmp_path / "out" / "value_model" / "config.json")
    assert math.isfinite(trainer.state.log_history[-1]["loss/value_avg"])
    assert isinstance(MTPForCausalLM.from_pretrained(str(tmp_path / "out")), MTPForCausalLM)


# -- save and resume -----------------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted(tiny_model, tokenizer, prompts, ppo_args, tmp_path):
    def run(output_dir, resume=None):
        args = ppo_args(output_dir=str(output_dir), max_steps=4, save_strategy="steps", save_steps=2)
        trainer = MTPPPOTrainer(
            tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "mtp_heads.safetensors").is_file() and (checkpoint / "value_head.safetensors").is_file()
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.state.global_step == 4
    a, b = policy_state(full), policy_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k, v in full.mtp_model.heads.state_dict().items():
        assert torch.equal(v, resumed.mtp_model.heads.state_dict()[k])
    scores = [[h["objective/scores"] for h in t.state.log_history if "objective/scores" in h] for t in (full, resumed)]
    assert scores[0][2:] == scores[1][-2:]
    # the final model loads as an MTP model
    full.save_model(str(tmp_path / "final"))
    loaded = MTPForCausalLM.from_pretrained(str(tmp_path / "final"))
    assert torch.equal(loaded.base_model.state_dict()["model.norm.weight"], a["model.norm.weight"])


def test_heads_are_saved_and_loaded_in_one_place(tiny_model, tokenizer, prompts, ppo_args, tmp_path, monkeypatch):
    """Every writer and reader of the heads' files goes through `MTPForCausalLM.save_heads` / `load_heads`: no other
    module names the files, and PPO's checkpoint (as SFT's, through the mixin) calls them."""
    import trl_mtp
    from trl_mtp import model as model_module

    package = Path(trl_mtp.__file__).parent
    naming = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p != Path(model_module.__file__) and "HEADS_FILE" in p.read_text()
    )
    assert naming == []
    calls = []
    for name in ("save_heads", "load_heads"):
        original = getattr(MTPForCausalLM, name)
        monkeypatch.setattr(
            MTPForCausalLM,
            name,
            lambda self, directory, _f=original, _n=name, **kw: calls.append(_n) or _f(self, directory, **kw),
        )
    trainer = MTPPPOTrainer(
        tiny_model(),
        ppo_args(max_steps=1),
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_funcs=first_token_parity,
    )
    trainer.model_wrapped = trainer.model
    trainer._save(str(tmp_path / "ckpt"))
    trainer._load_from_checkpoint(str(tmp_path / "ckpt"))
    assert calls == ["save_heads", "load_heads"]


def test_old_names_are_aliases():
    """`PPOConfig` / `PPOTrainer` (the former names; TRL's own `PPOTrainer` is another class) are the same objects as
    `MTPPPOConfig` / `MTPPPOTrainer`, from the package and from `trl_mtp.trainers`."""
    import trl_mtp
    from trl_mtp import trainers

    assert trl_mtp.PPOConfig is trl_mtp.MTPPPOConfig is trainers.PPOConfig is trainers.MTPPPOConfig
    assert trl_mtp.PPOTrainer is trl_mtp.MTPPPOTrainer is trainers.PPOTrainer is trainers.MTPPPOTrainer
    assert {"PPOConfig", "PPOTrainer", "MTPPPOConfig", "MTPPPOTrainer"} <= set(trl_mtp.__all__) & set(trainers.__all__)


# -- learning ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reward_goes_up_on_an_easy_task(tokenizer, ppo_args):
    """From a briefly pretrained base (digits and commas), PPO raises the share of digits it writes."""
    from trl_mtp.embedded.pretrain import pretrain_base

    base = AutoModelForCausalLM.from_pretrained(pretrain_base("tiny-llama", "copy", steps=60, seq_len=64, batch_size=8))
    args = ppo_args(
        max_steps=12,
        per_device_train_batch_size=16,
        num_mini_batches=1,
        response_length=8,
        kl_coef=0.01,
        learning_rate=1e-3,
    )
    trainer = MTPPPOTrainer(
        base,
        args,
        train_dataset=get_task("copy", length=3).train(64),
        processing_class=tokenizer,
        reward_funcs=digit_fraction,
    )
    trainer.train()
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.15, scores


# -- two processes ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group(TWO_PROCESS_GROUP)
def test_two_process_ppo_with_accelerate(tmp_path, tokenizer):
    reports = launch(Path(__file__).with_name("ddp_ppo_run.py"), str(tmp_path / "run"), port=29544)
    assert all(report["episode"] == "16" for report in reports)  # 2 iterations x 2 processes x 4 rollouts
    assert len({report["norm"] for report in reports}) == 1  # DDP kept the replicas identical
    assert MTPForCausalLM.from_pretrained(str(tmp_path / "run")) is not None


@pytest.mark.slow
def test_cli_ppo_with_yaml_config(tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\nmax_steps: 2\nresponse_length: 6\n"
        "per_device_train_batch_size: 4\nreport_to: none\nsave_strategy: 'no'\n"
        "pretrain_steps: 20\nnum_eval_examples: 4\nnum_train_examples: 16\n"
    )
    cli = os.path.join(os.path.dirname(sys.executable), "trl-mtp")
    done = subprocess.run(
        [cli, "ppo", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "copy eval exact-match" in done.stdout
    assert (tmp_path / "out" / "mtp_heads.safetensors").is_file()
    bad = subprocess.run([cli, "ppo", "--kl_estimator", "k9"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
