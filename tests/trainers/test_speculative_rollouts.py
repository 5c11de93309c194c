"""Speculative rollouts in MTP-GRPO and MTP-RLOO: TRL's transformers generation path, with the heads drafting.

Distribution losslessness is proved for `speculative_generate` itself (tests/test_decoding_sampling.py); here: the
override returns exactly what TRL's own path returns (greedy, token for token, EOS cuts included), a training step
samples through it and logs `spec/*`, and what it cannot honour is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from small_runs import SMALL_RUN
from trl import GRPOTrainer, RLOOTrainer

from trl_mtp import MTPGRPOConfig, MTPGRPOTrainer, MTPPPOTrainer, MTPRLOOConfig, MTPRLOOTrainer
from trl_mtp.embedded.presets import build_model
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.trainers import ppo_models, speculative_rollouts

TRAINERS = [(MTPGRPOTrainer, MTPGRPOConfig), (MTPRLOOTrainer, MTPRLOOConfig)]
ON_POLICY = dict(
    beta=0.0, num_generations=4, max_completion_length=8, generation_batch_size=4, per_device_train_batch_size=4
)
SPECULATIVE = dict(speculative_rollouts=True, head_type="blockwise", num_mtp_heads=3)
PROMPTS = ["1 2 3", "4", "5 6 7 8 9", "2 2"]


def make_trainer(trainer_cls, config_cls, model, tokenizer, tmp_path, trainer_kwargs=None, **overrides):
    args = config_cls(
        output_dir=str(tmp_path), **{**SMALL_RUN, "max_steps": 1, **ON_POLICY, **SPECULATIVE, **overrides}
    )
    task = get_task("copy", length=2, max_value=9)
    return trainer_cls(
        model,
        reward_funcs=task.reward,
        args=args,
        train_dataset=task.train(8),
        processing_class=tokenizer,
        **(trainer_kwargs or {}),
    )


def completions(trainer, prompt_ids, speculative: bool):
    """`_generate_single_turn`'s completion ids, through the override or TRL's own path."""
    trainer.args.speculative_rollouts = speculative
    if isinstance(trainer, MTPGRPOTrainer):
        out, logprobs = trainer._generate_single_turn(prompt_ids, None, {}, num_generations=1)
        assert logprobs is None  # TRL's transformers path has no sampler log-probs either
        return out
    return trainer._generate_single_turn(prompt_ids, None, {})


def speculated(trainer) -> bool:
    metrics = trainer._metrics["train"]
    return all(metrics.get(k) for k in ("spec/draft_tokens", "spec/acceptance_depth_1", "spec/tokens_per_s"))


def same_rollouts_as_trl(trainer, prompt_ids) -> bool:
    """The override speculated, and gave TRL's own completion ids (greedy), row for row."""
    trainer._metrics["train"].clear()
    plain = completions(trainer, prompt_ids, speculative=False)
    assert not speculated(trainer)
    return completions(trainer, prompt_ids, speculative=True) == plain and speculated(trainer)


@pytest.mark.parametrize("trainer_cls, config_cls", TRAINERS)
def test_greedy_speculative_rollouts_are_trls_own(
    trainer_cls, config_cls, tiny_model, tokenizer, tmp_path, monkeypatch
):
    """Greedy (`do_sample=False` through TRL's `generation_kwargs`), left-padded prompts of different lengths each
    repeated as TRL's sampler repeats them: the same completion ids as TRL's `generate` path, cut after the first
    EOS as TRL cuts them. The EOS is a token the model emits mid-completion, so rows stop at different lengths and
    a wrong cut shows. A version that keeps the tokens after the EOS, one that drops the EOS, and a bypassed
    override (TRL's path, no speculation) each fail the check."""
    model = tiny_model()
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS for _ in range(2)]
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(p).flip(0) for p in prompt_ids], batch_first=True, padding_value=tokenizer.pad_token_id
    ).flip(1)
    greedy = model.generate(
        ids, attention_mask=(ids != tokenizer.pad_token_id).long(), do_sample=False, max_new_tokens=8
    )
    model.generation_config.eos_token_id = int(greedy[0, ids.size(1) + 2])  # row 0 stops after 3 tokens
    trainer = make_trainer(trainer_cls, config_cls, model, tokenizer, tmp_path, generation_kwargs={"do_sample": False})
    assert trainer.generation_config.do_sample is False
    plain = completions(trainer, prompt_ids, speculative=False)
    assert len({len(c) for c in plain}) > 1, "every row has the same length: the EOS cut is not exercised"
    assert same_rollouts_as_trl(trainer, prompt_ids)

    through_eos = speculative_rollouts.completions_through_eos
    keep_all = lambda rows, eos: [r.tolist() for r in rows.cpu()]  # noqa: E731
    drop_eos = lambda rows, eos: [r[:-1] if r[-1] in eos else r for r in through_eos(rows, eos)]  # noqa: E731
    for broken in (keep_all, drop_eos):
        monkeypatch.setattr(speculative_rollouts, "completions_through_eos", broken)
        assert not same_rollouts_as_trl(trainer, prompt_ids)
    monkeypatch.setattr(speculative_rollouts, "completions_through_eos", through_eos)
    trl_parent = GRPOTrainer if trainer_cls is MTPGRPOTrainer else RLOOTrainer
    monkeypatch.setattr(trainer_cls, "_generate_single_turn", trl_parent._generate_single_turn)
    assert not same_rollouts_as_trl(trainer, prompt_ids)


@pytest.mark.parametrize("trainer_cls, config_cls", TRAINERS)
def test_a_step_with_speculative_rollouts_logs_spec(
    trainer_cls, config_cls, tiny_model, tokenizer, tmp_path, monkeypatch
):
    """One sampled (temperature 1) training step with adaptive drafting: the rollouts come from
    `speculative_generate` (counted), the step trains, and the log carries `spec/*` beside TRL's metrics."""
    trainer = make_trainer(trainer_cls, config_cls, tiny_model(), tokenizer, tmp_path, adaptive_draft_tokens=True)
    calls = []
    generate = trainer.mtp_model.speculative_generate
    trainer.mtp_model.speculative_generate = lambda *a, **kw: calls.append(kw) or generate(*a, **kw)
    trainer.train()
    log = trainer.state.log_history[0]
    assert calls and all(kw["adaptive_draft_tokens"] is trainer.draft_planner for kw in calls)
    assert calls[0]["generation_config"] is trainer.generation_config  # TRL's sampler settings, unchanged
    for key in ("spec/draft_tokens", "spec/acceptance_depth_1", "spec/acceptance_depth_3", "spec/tokens_per_s"):
        assert key in log, key
    assert 0.0 <= log["spec/draft_tokens"] <= 3.0 and "mtp/loss" in log and "reward" in log
    # adaptive drafting turned off mid-run: every round drafts D again, though the run's planner is kept (a helper
    # that passed the planner whenever one existed went on adapting)
    trainer.args.adaptive_draft_tokens = False
    trainer.speculative_completions([[5, 6, 7]])
    assert calls[-1]["adaptive_draft_tokens"] is False and trainer.draft_planner is not None
    # the trained tree keeps the mode TRL left, not the MTP wrapper's: with only the wrapper in eval, the rollout
    # (speculative_generate restores the wrapper's flag, over the whole tree) leaves the trained tree training
    trainer.mtp_model.eval()
    trainer.model.train()
    assert not trainer.mtp_model.training and trainer.model.training
    trainer.speculative_completions([[5, 6, 7]])
    assert trainer.model.training
    base = trainer.mtp_model.base_model  # the rollout without its restore: the one base.train(True) is dropped
    monkeypatch.setattr(base, "train", lambda mode=True: base if mode else torch.nn.Module.train(base, False))
    trainer.speculative_completions([[5, 6, 7]])
    assert not trainer.model.training


def test_what_speculative_rollouts_cannot_honour_is_refused(tiny_model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL
    with pytest.raises(ValueError, match="^use_vllm=True: speculative_rollouts replace"):
        MTPGRPOConfig(output_dir=str(tmp_path), speculative_rollouts=True, use_vllm=True)
    with pytest.raises(ValueError, match="^use_transformers_continuous_batching=True"):
        MTPRLOOConfig(output_dir=str(tmp_path), speculative_rollouts=True, use_transformers_continuous_batching=True)
    with pytest.raises(ValueError, match="^adaptive_draft_tokens=True: drafting adapts only"):
        MTPGRPOConfig(output_dir=str(tmp_path), adaptive_draft_tokens=True)
    with pytest.raises(ValueError, match="speculative_rollouts=True with this generation config: .*num_beams=2"):
        make_trainer(
            MTPGRPOTrainer, MTPGRPOConfig, tiny_model(), tokenizer, tmp_path, generation_kwargs={"num_beams": 2}
        )
    with pytest.raises(ValueError, match="speculative_rollouts=True with a rollout_func"):
        make_trainer(
            MTPGRPOTrainer,
            MTPGRPOConfig,
            tiny_model(),
            tokenizer,
            tmp_path,
            trainer_kwargs={"rollout_func": lambda p, t: {}},
        )


def fake_trainer(engine, stage: int = 2, **args):
    """What the shared refusal reads: the engine, its ZeRO stage, the arguments."""
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}})
    accelerator = SimpleNamespace(distributed_type=engine, state=SimpleNamespace(deepspeed_plugin=plugin))
    return SimpleNamespace(args=SimpleNamespace(**{"speculative_rollouts": True, **args}), accelerator=accelerator)


def test_engines_gathering_around_every_forward_are_refused(tiny_model, tokenizer, tmp_path, ppo_args, monkeypatch):
    """Under FSDP (v1, FSDP2) and ZeRO-3 without `ds3_gather_for_generation` (PPO has no such gather) ranks would run
    different numbers of forwards, each with all-gathers: refused at set-up, one check for PPO, GRPO and RLOO. A GRPO
    or RLOO set-up that skips the shared check fails."""
    refuse = speculative_rollouts.SpeculativeRollouts._refuse_unsupported_speculation
    with pytest.raises(ValueError, match="^speculative_rollouts=True under FSDP: ranks run different numbers"):
        refuse(fake_trainer(DistributedType.FSDP))
    for trainer in (
        fake_trainer(DistributedType.DEEPSPEED, 3),
        fake_trainer(DistributedType.DEEPSPEED, 3, ds3_gather_for_generation=False),
    ):
        with pytest.raises(ValueError, match="^speculative_rollouts=True under DeepSpeed ZeRO-3: ranks"):
            refuse(trainer)
    refuse(fake_trainer(DistributedType.DEEPSPEED, 3, ds3_gather_for_generation=True))  # gathered once per rollout
    refuse(fake_trainer(DistributedType.DEEPSPEED, 2))
    refuse(fake_trainer(DistributedType.MULTI_GPU))
    refuse(fake_trainer(DistributedType.FSDP, speculative_rollouts=False))

    def shared_check(self):
        raise ValueError("the shared check ran")

    monkeypatch.setattr(speculative_rollouts.SpeculativeRollouts, "_refuse_unsupported_speculation", shared_check)
    task = get_task("copy", length=2, max_value=9)
    for trainer_cls, config_cls in TRAINERS:
        with pytest.raises(ValueError, match="the shared check ran"):
            make_trainer(trainer_cls, config_cls, tiny_model(), tokenizer, tmp_path)
    with pytest.raises(ValueError, match="the shared check ran"):
        MTPPPOTrainer(
            tiny_model(),
            ppo_args(speculative_rollouts=True, head_type="blockwise", num_mtp_heads=3),
            train_dataset=task.train(8),
            processing_class=tokenizer,
            reward_funcs=task.reward,
        )
    # a GRPO set-up that skips the shared check: built without a refusal, and the check above shows it
    monkeypatch.setattr(speculative_rollouts.TRLSpeculativeSampling, "_refuse_unsupported_speculation", lambda _: None)
    make_trainer(MTPGRPOTrainer, MTPGRPOConfig, tiny_model(), tokenizer, tmp_path)


def test_dropout_in_the_policy_is_refused(tokenizer, tmp_path, monkeypatch):
    """TRL samples in train mode (dropout on), speculative rollouts in eval mode: dropout left in the policy is
    refused, naming `disable_dropout`. GPT-2's `nn.Dropout`s: refused with disable_dropout=False, built with True
    (TRL turns them off). Llama's functional attention dropout, which TRL's `disable_dropout` leaves on: refused with
    either; a check that looks for `nn.Dropout` modules only misses it."""

    def trainer(preset, disable_dropout, **dropout):
        model = build_model(preset, len(tokenizer), tokenizer=tokenizer, **dropout)
        return make_trainer(MTPGRPOTrainer, MTPGRPOConfig, model, tokenizer, tmp_path, disable_dropout=disable_dropout)

    gpt2_dropout = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    with pytest.raises(ValueError, match=r"^speculative_rollouts=True with dropout in the policy \(.*p=0.1\): .* set "):
        trainer("tiny-gpt2", False, **gpt2_dropout)
    trainer("tiny-gpt2", True, **gpt2_dropout)
    for disable_dropout, fix in ((False, "set disable_dropout=True"), (True, "set it to 0 in the model config")):
        with pytest.raises(ValueError, match=rf"\(model\.layers\.0\.self_attn\.attention_dropout=0.1\).*; {fix}$"):
            trainer("tiny-llama", disable_dropout, attention_dropout=0.1)
    trainer("tiny-llama", False)  # no dropout: built
    dropout_in = ppo_models.dropout_in

    def modules_only(model):  # the nn.Dropout modules only, as TRL's disable_dropout sees the model
        return dropout_in(torch.nn.Sequential(*[m for m in model.modules() if isinstance(m, torch.nn.Dropout)]))

    monkeypatch.setattr(speculative_rollouts, "dropout_in", modules_only)
    trainer("tiny-llama", True, attention_dropout=0.1)  # built: the functional attention dropout went unseen
