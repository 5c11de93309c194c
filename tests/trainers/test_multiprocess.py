"""The same MTP-SFT runs in 2 processes (DDP over gloo on CPU), as it would on 2 GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from two_process import launch

from trl_mtp import MTPForCausalLM


@pytest.mark.slow
def test_two_process_sft_with_accelerate(tmp_path, tokenizer):
    reports = launch(Path(__file__).with_name("ddp_sft_run.py"), str(tmp_path / "run"), port=29533)
    # both ranks logged the same all-reduced depth-1 loss, and the result loads
    assert len({report["loss_depth_1"] for report in reports}) == 1
    model = MTPForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert torch.isfinite(model.mtp_logits(torch.tensor([[1, 2, 3]]))).all()
