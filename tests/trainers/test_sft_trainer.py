"""MTPSFTTrainer: dataset formats, logged schedules, frequency gating, masks, save/resume, LoRA, freeze_base."""

from __future__ import annotations

import math

import pytest
import torch

from trl_mtp import MTPForCausalLM, MTPSFTConfig, MTPSFTTrainer
from trl_mtp.config import HEAD_TYPES
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.schedules import mtp_lambda_at, mtp_window_at


def step_logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]


def head_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.mtp_model.heads.state_dict().items()}


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_each_family_trains_and_logs_depth_metrics(head_type, tiny_model, sft_args, arithmetic_train, tokenizer):
    trainer = MTPSFTTrainer(
        tiny_model(), sft_args(head_type=head_type), train_dataset=arithmetic_train, processing_class=tokenizer
    )
    before = head_state(trainer)
    trainer.train()
    last = step_logs(trainer)[-1]
    for name in (
        "mtp/loss",
        "mtp/loss_depth_1",
        "mtp/loss_depth_2",
        "mtp/acc_depth_2",
        "mtp/entropy_depth_1",
        "mtp/lambda",
        "mtp/window",
    ):
        assert name in last and math.isfinite(last[name]), name
    after = head_state(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before), "heads did not learn"


@pytest.mark.parametrize("fmt", ["language_modeling", "prompt_completion", "conversational"])
@pytest.mark.parametrize("packing", [False, True])
def test_dataset_formats_and_packing(fmt, packing, tiny_model, sft_args, tokenizer):
    if fmt == "language_modeling":
        dataset = get_task("stdlib", chunk_chars=400).train(32)
    else:
        dataset = get_task("sort").train(48, conversational=fmt == "conversational")
    args = sft_args(packing=packing, max_length=128, max_steps=2)
    trainer = MTPSFTTrainer(tiny_model(), args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    logs = step_logs(trainer)
    assert all(math.isfinite(h["mtp/loss_depth_2"]) for h in logs)


def test_completion_only_masks_reach_the_heads(tiny_model, sft_args, tokenizer):
    """Depth-1 targets are counted only on completion tokens when completion_only_loss is on."""
    dataset = get_task("sort").train(16)
    counts = {}
    for completion_only in (True, False):
        trainer = MTPSFTTrainer(
            tiny_model(),
            sft_args(completion_only_loss=completion_only, max_steps=1, per_device_train_batch_size=16),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        seen = []
        original = trainer.mtp_model.compute_mtp_loss

        def spy(input_ids, labels, *args, **kwargs):  # called within this iteration's train(): the loop's names hold
            out = original(input_ids, labels, *args, **kwargs)  # noqa: B023
            seen.append((labels.clone(), out.num_tokens.clone()))  # noqa: B023
            return out

        trainer.mtp_model.compute_mtp_loss = spy
        trainer.train()
        labels, num_tokens = seen[0]
        counts[completion_only] = num_tokens
        if completion_only:
            # every row: its prompt is masked, and a depth-i target exists only where labels[t+1+i] is a label
            assert (labels[:, 0] == -100).all()
            assert num_tokens[0] <= (labels != -100).sum()
    assert (counts[True] < counts[False]).all()


def test_schedules_are_logged_per_step(tiny_model, sft_args, arithmetic_train, tokenizer):
    args = sft_args(
        max_steps=8,
        num_mtp_heads=4,
        mtp_lambda=0.3,
        mtp_lambda_end=0.1,
        mtp_lambda_schedule="linear",
        mtp_window_schedule="forward",
    )
    trainer = MTPSFTTrainer(tiny_model(), args, train_dataset=arithmetic_train, processing_class=tokenizer)
    trainer.train()
    logs = step_logs(trainer)
    assert len(logs) == 8
    for step, h in enumerate(logs):  # the log at global step s+1 comes from the forward at step s
        assert h["mtp/lambda"] == pytest.approx(mtp_lambda_at(step, 8, start=0.3, end=0.1, schedule="linear"))
        window = mtp_window_at(step, 8, num_heads=4, schedule="forward")
        assert h["mtp/window"] == window
        assert f"mtp/loss_depth_{window}" in h and f"mtp/loss_depth_{window + 1}" not in h


def test_frequency_gating_skips_heads_on_off_steps(tiny_model, sft_args, arithmetic_train, tokenizer):
    """With the base frozen, the heads move only on steps where the MTP loss applies."""
    args = sft_args(max_steps=6, mtp_every_n_steps=3, freeze_base=True)
    trainer = MTPSFTTrainer(tiny_model(), args, train_dataset=arithmetic_train, processing_class=tokenizer)
    snapshots = [head_state(trainer)]

    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_step_end(self, *_, **__):
            snapshots.append(head_state(trainer))

    trainer.add_callback(Snapshot())
    trainer.train()
    moved = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(snapshots, snapshots[1:])]
    assert moved == [True, False, False, True, False, False]
    assert [h["mtp/applied"] for h in step_logs(trainer)] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert all(("mtp/loss_depth_1" in h) == bool(h["mtp/applied"]) for h in step_logs(trainer))


def test_freeze_base_trains_heads_only(tiny_model, sft_args, arithmetic_train, tokenizer):
    model = tiny_model()
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = MTPSFTTrainer(
        model, sft_args(freeze_base=True), train_dataset=arithmetic_train, processing_class=tokenizer
    )
    trainer.train()
    base_after = trainer.mtp_model.base_model.state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_save_and_load_round_trip(tiny_model, sft_args, arithmetic_train, tokenizer, tmp_path):
    trainer = MTPSFTTrainer(
        tiny_model(), sft_args(head_type="parallel"), train_dataset=arithmetic_train, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = MTPForCausalLM.from_pretrained(str(tmp_path / "final"))
    ids = torch.tensor([tokenizer("12+34=")["input_ids"]])
    trainer.mtp_model.eval()
    assert torch.equal(loaded.mtp_logits(ids), trainer.mtp_model.mtp_logits(ids))
    # and a saved run is a valid `model` for a new trainer: its trained heads are kept
    again = MTPSFTTrainer(
        str(tmp_path / "final"),
        sft_args(head_type="parallel"),
        train_dataset=arithmetic_train,
        processing_class=tokenizer,
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.mtp_model.heads.state_dict().values(), loaded.heads.state_dict().values())
    )


def weights(mtp_model: MTPForCausalLM) -> dict[str, torch.Tensor]:
    """Trunk and heads, each once (a trainer also lists the heads under the base, where it attaches them)."""
    return {k: v for k, v in mtp_model.state_dict().items() if not k.startswith("base_model.mtp_heads.")}


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_model, sft_args, arithmetic_train, tokenizer, tmp_path):
    """A run resumed from its step-3 checkpoint takes exactly the 3 remaining steps and ends equal to the uninterrupted
    run, although the resumed trainer was built from another initialisation (trunk seed 1, other heads): a resume
    that loaded nothing, or restarted from step 0, fails it (the former version built both from the same seed)."""
    from transformers import TrainerCallback

    common = dict(
        max_steps=6,
        mtp_lambda_schedule="linear",
        mtp_window_schedule="forward",
        num_mtp_heads=3,
        head_type="sequential",
        save_strategy="steps",
        save_steps=3,
    )
    full = MTPSFTTrainer(
        tiny_model(seed=0),
        sft_args(output_dir=str(tmp_path / "a"), **common),
        train_dataset=arithmetic_train,
        processing_class=tokenizer,
    )
    full.train()
    torch.manual_seed(1)  # other heads too
    resumed = MTPSFTTrainer(
        tiny_model(seed=1),
        sft_args(output_dir=str(tmp_path / "b"), **common),
        train_dataset=arithmetic_train,
        processing_class=tokenizer,
    )
    checkpoint = weights(MTPForCausalLM.from_pretrained(str(tmp_path / "a" / "checkpoint-3")))
    assert checkpoint.keys() == weights(resumed.mtp_model).keys()
    elsewhere = {k for k, v in weights(resumed.mtp_model).items() if not torch.equal(checkpoint[k], v)}
    assert "base_model.model.embed_tokens.weight" in elsewhere and any(k.startswith("heads.") for k in elsewhere)

    steps = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    resumed.add_callback(CountSteps())
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert steps == [4, 5, 6]
    ended = weights(resumed.mtp_model)
    for name, a in weights(full.mtp_model).items():
        torch.testing.assert_close(ended[name], a, rtol=0, atol=1e-6, msg=name)


def test_trained_heads_are_kept_but_trained_the_runs_way(tiny_model, sft_args, arithmetic_train, tokenizer, tmp_path):
    """A run from an MTP checkpoint (SFT: coupled, lambda 0.3) keeps the heads but takes its own loss fields: a
    decoupled follow-up must leave the trunk to its own loss (this once leaked the SFT run's coupled mode into RL)."""
    from trl_mtp import MTPConfig

    coupled = MTPForCausalLM.from_base(tiny_model(), MTPConfig(head_type="sequential", num_mtp_heads=2, mode="coupled"))
    coupled.save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    args = sft_args(
        head_type="blockwise", num_mtp_heads=3, mode="decoupled", decoupled_target="self_distill", mtp_lambda=0.1
    )
    trainer = MTPSFTTrainer(str(tmp_path / "sft"), args, train_dataset=arithmetic_train, processing_class=tokenizer)
    config = trainer.mtp_model.mtp_config
    assert (config.head_type, config.num_mtp_heads) == ("sequential", 2)  # what the heads are: the checkpoint's
    assert (config.mode, config.decoupled_target, config.mtp_lambda) == ("decoupled", "self_distill", 0.1)
    assert trainer.mtp_model.heads.frozen_embeddings  # the chain's embeddings are detached in decoupled mode
    ids = torch.tensor([tokenizer("12+34=56")["input_ids"]])
    trainer.mtp_model.train()
    trainer.mtp_model(ids, labels=ids).mtp_loss.backward()
    assert all(
        p.grad is None or not p.grad.any()
        for p in trainer.mtp_model.base_model.parameters()
        if p.requires_grad and not any(p is q for q in trainer.mtp_model.heads.parameters())
    )
    assert any(p.grad is not None and p.grad.any() for p in trainer.mtp_model.heads.parameters())


def test_lora_on_trunk_with_trainable_heads(tiny_model, sft_args, arithmetic_train, tokenizer, tmp_path):
    from peft import LoraConfig

    model = tiny_model()
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = MTPSFTTrainer(
        model,
        sft_args(head_type="parallel"),
        train_dataset=arithmetic_train,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    heads_before = head_state(trainer)
    trainer.train()
    names = [n for n, _ in trainer.model.named_modules()]
    assert any("lora_A" in n for n in names)
    assert not any("mtp_heads" in n and "lora" in n for n in names), "LoRA must not wrap the heads"
    assert any(not torch.equal(heads_before[k], v) for k, v in head_state(trainer).items())
    trunk = {
        k: v for k, v in trainer.model.get_base_model().state_dict().items() if "lora" not in k and "mtp_heads" not in k
    }
    assert all(torch.equal(base_before[k.replace(".base_layer", "")], v) for k, v in trunk.items())
    # save (adapter + heads) and load back through transformers' adapter loading
    base_dir = tmp_path / "base"
    tiny_model().save_pretrained(base_dir)
    trainer.model.peft_config["default"].base_model_name_or_path = str(base_dir)
    trainer.save_model(str(tmp_path / "lora"))
    loaded = MTPForCausalLM.from_pretrained(str(tmp_path / "lora"))
    ids = torch.tensor([tokenizer("12+34=")["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(loaded.mtp_logits(ids), trainer.mtp_model.mtp_logits(ids))


@pytest.mark.parametrize(
    "field, value",
    [
        ("head_type", "transformer"),
        ("num_mtp_heads", 0),
        ("mode", "both"),
        ("mtp_lambda_schedule", "exp"),
        ("mtp_every_n_steps", 0),
        ("mtp_window_schedule", "up"),
    ],
)
def test_bad_config_value_names_the_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        MTPSFTConfig(output_dir=str(tmp_path), **{field: value})


def test_cpu_default_is_not_bf16(tmp_path):
    assert MTPSFTConfig(output_dir=str(tmp_path)).bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_decoupled_heads_never_rescale_the_policy_update(tiny_model, sft_args, arithmetic_train, tokenizer):
    """Decoupled mode with clipping on: the trunk ends the same whatever the MTP weight (separate clip norms)."""
    trunks = []
    for mtp_lambda in (0.0, 50.0):
        args = sft_args(mode="decoupled", mtp_lambda=mtp_lambda, max_grad_norm=0.5, max_steps=3)
        trainer = MTPSFTTrainer(tiny_model(), args, train_dataset=arithmetic_train, processing_class=tokenizer)
        trainer.train()
        trunks.append(
            {k: v.clone() for k, v in trainer.mtp_model.base_model.state_dict().items() if "mtp_heads" not in k}
        )
    for k in trunks[0]:
        torch.testing.assert_close(trunks[0][k], trunks[1][k], rtol=0, atol=1e-6, msg=k)


def test_fp16_decoupled_clipping_unscales_once(
    tiny_model, sft_args, arithmetic_train, tokenizer, fp16_scaler, monkeypatch
):
    """fp16 (a GradScaler; emulated, accelerate has none on CPU) in decoupled mode: the gradients are unscaled once,
    then heads and policy are clipped on their own norms: the same weights, bit for bit, as without the scaler.
    Clipping each group through `accelerator.clip_grad_norm_` (the former code, restored below) unscaled twice and
    raised "unscale_() has already been called on this optimizer since the last update()"."""

    def run(scaled: bool):
        args = sft_args(mode="decoupled", mtp_lambda=1.0, max_grad_norm=0.1, max_steps=2)
        torch.manual_seed(0)  # new heads draw from the global generator
        trainer = MTPSFTTrainer(tiny_model(), args, train_dataset=arithmetic_train, processing_class=tokenizer)
        if scaled:
            fp16_scaler(trainer.accelerator)
        trainer.train()
        return trainer.mtp_model.state_dict(), trainer

    (plain, _), (scaled, trainer) = run(False), run(True)
    assert trainer.accelerator.scaler.get_scale() == 2.0**16  # the scaler ran, no step skipped
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)

    def per_group(self, max_norm):
        return torch.stack(
            [
                torch.as_tensor(self.accelerator.clip_grad_norm_(group, max_norm))
                for group in self._clip_groups()
                if group
            ]
        ).norm()

    monkeypatch.setattr(MTPSFTTrainer, "clip_each_group", per_group)
    with pytest.raises(RuntimeError, match="unscale_"):
        run(True)
