"""Fixtures of the trainer tests: small datasets, a config factory, fp16's gradient path, the sharded runs' initial
model (`tiny_model` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
from small_runs import SMALL_RUN

from trl_mtp.embedded.tasks.registry import get_task


@pytest.fixture(scope="session")
def initial_model(tmp_path_factory, tokenizer):
    """The folder every sharded run (tests/trainers/sharded_*_run.py) starts from, as users start from a checkpoint:
    a tiny Llama (2 layers, tied embeddings), no heads yet."""
    from trl_mtp.embedded.presets import build_model

    folder = tmp_path_factory.mktemp("initial_model")
    build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer, num_hidden_layers=2).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def fp16_scaler(monkeypatch):
    """Turns a trainer's accelerator into fp16 mixed precision's gradient path: a GradScaler scales the loss,
    `unscale_gradients` unscales, the optimizer steps through the scaler. Accelerate keeps no scaler on CPU (its
    fp16 is silently off there), so this is the only way to run that path here; autocast stays off (fp32 forward)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))

    def apply(accelerator):
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
        accelerator.autocast_handler = AutocastKwargs(enabled=False)

    return apply


@pytest.fixture(scope="session")
def arithmetic_train():
    return get_task("arithmetic").train(64)


@pytest.fixture
def sft_args(tmp_path):
    from trl_mtp import MTPSFTConfig

    def make(**overrides):
        defaults = {**SMALL_RUN, "output_dir": str(tmp_path / "run"), "max_steps": 4, "per_device_train_batch_size": 8}
        return MTPSFTConfig(**{**defaults, **overrides})

    return make


@pytest.fixture
def ppo_args(tmp_path):
    """`ppo_args(**overrides)`: a small `MTPPPOConfig` (2 iterations of 4 rollouts, 2 epochs of 2 mini-batches);
    `config_class` picks another PPO config (the world model's)."""
    from trl_mtp import MTPPPOConfig

    def make(config_class=MTPPPOConfig, **overrides):
        defaults = dict(
            output_dir=str(tmp_path / "run"),
            max_steps=2,
            per_device_train_batch_size=4,
            num_mini_batches=2,
            num_ppo_epochs=2,
            response_length=6,
            learning_rate=1e-3,
            temperature=1.0,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
            num_mtp_heads=2,
            dataloader_pin_memory=False,
        )
        return config_class(**{**defaults, **overrides})

    return make
