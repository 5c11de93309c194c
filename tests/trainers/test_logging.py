"""The `mtp/*` and `spec/*` metrics reach the `report_to` backends: read back from TensorBoard's event files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trl_mtp import MTPSFTConfig, MTPSFTTrainer, PPOConfig, PPOTrainer
from trl_mtp.embedded.tasks.registry import get_task

pytest.importorskip("tensorboard")


def scalars(log_dir: Path) -> dict[str, list[float]]:
    """tag -> values of every scalar in the TensorBoard event files under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    out: dict[str, list[float]] = {}
    for path in files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def logged(trainer, name: str) -> list[float]:
    return [h[name] for h in trainer.state.log_history if name in h]


def test_sft_mtp_metrics_in_tensorboard(tmp_path, tokenizer, tiny_model):
    args = MTPSFTConfig(
        output_dir=str(tmp_path / "run"),
        report_to=["tensorboard"],
        max_steps=4,
        logging_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        activation_checkpointing=False,
        save_strategy="no",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        bf16=False,
        head_type="blockwise",
        num_mtp_heads=2,
    )
    model = tiny_model()
    trainer = MTPSFTTrainer(model, args, train_dataset=get_task("arithmetic").train(32), processing_class=tokenizer)
    trainer.train()
    tb = scalars(tmp_path / "run")  # TensorBoard writes under output_dir/runs by default
    for name in ("mtp/loss", "mtp/loss_depth_1", "mtp/loss_depth_2", "mtp/acc_depth_1", "mtp/entropy_depth_2"):
        assert tb[f"train/{name}"] == pytest.approx(logged(trainer, name), rel=1e-6), name
    assert len(tb["train/mtp/loss_depth_1"]) == 2


def test_ppo_speculative_rollouts_log_spec_metrics_to_tensorboard(tmp_path, tokenizer, tiny_model):
    args = PPOConfig(
        output_dir=str(tmp_path / "run"),
        report_to=["tensorboard"],
        max_steps=2,
        per_device_train_batch_size=4,
        num_mini_batches=2,
        num_ppo_epochs=1,
        response_length=6,
        learning_rate=1e-3,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
        head_type="blockwise",
        num_mtp_heads=2,
        mode="decoupled",
        speculative_rollouts=True,
    )
    model = tiny_model()
    trainer = PPOTrainer(
        model,
        args,
        train_dataset=get_task("copy", length=3).train(16),
        processing_class=tokenizer,
        reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts),
    )
    trainer.train()
    tb = scalars(tmp_path / "run")  # TensorBoard writes under output_dir/runs by default
    for name in ("spec/mean_accepted_length", "spec/acceptance_pos_1", "spec/acceptance_pos_2", "mtp/loss_depth_1"):
        values = tb[f"train/{name}"]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
        assert values == pytest.approx(logged(trainer, name), rel=1e-6), name
