"""The same MTP-SFT runs in 2 processes (DDP over gloo on CPU), as it would on 2 GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_mtp import MTPForCausalLM


@pytest.mark.slow
def test_two_process_sft_with_accelerate(tmp_path, tokenizer):
    script = Path(__file__).with_name("ddp_sft_run.py")
    accelerate = Path(sys.executable).with_name("accelerate")
    # `accelerate launch --cpu --num_processes 2` starts one process; this is the form that starts two (STACK_NOTES)
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(script), str(tmp_path / "run")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("RANK"))
    assert ranks == ["0", "1"], done.stdout
    assert all("OF 2 DONE" in line for line in done.stdout.splitlines() if line.startswith("RANK"))
    # both ranks logged the same all-reduced depth-1 loss, and the result loads
    losses = {line.split("=")[-1] for line in done.stdout.splitlines() if line.startswith("RANK")}
    assert len(losses) == 1
    model = MTPForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert torch.isfinite(model.mtp_logits(torch.tensor([[1, 2, 3]]))).all()
