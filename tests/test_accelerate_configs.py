"""The example accelerate configs (examples/accelerate/*.yaml). The DDP one starts a real 2-process MTP-SFT run, here on
CPU (gloo). The others need GPUs: on CPU accelerate turns an FSDP config into plain data parallelism (MULTI_CPU; seen),
and DeepSpeed is not installed, so they are only checked to parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trl_mtp import MTPForCausalLM

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
RUN = Path(__file__).resolve().parent / "trainers" / "ddp_sft_run.py"  # the 2-process SFT run of test_multiprocess


@pytest.mark.slow
def test_two_process_sft_with_the_ddp_config(tmp_path, tokenizer):
    name, mode, port = "ddp", "MULTI_CPU", 29571  # on CPU accelerate names MULTI_GPU's DDP MULTI_CPU (gloo)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(EXAMPLES / f"{name}.yaml"), "--mixed_precision", "no",
           "--main_process_port", str(port), str(RUN), str(tmp_path / "run")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}  # the configs' GPU run, on CPU
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert sorted(line.split()[1] for line in lines if line.startswith("RANK")) == ["0", "1"], done.stdout
    assert {line.split()[1] for line in lines if line.startswith("MODE")} == {mode}
    model = MTPForCausalLM.from_pretrained(str(tmp_path / "run"))  # the sharded run saved full tensors
    assert torch.isfinite(model.mtp_logits(torch.tensor([[1, 2, 3]]))).all()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_parse(path):
    config = yaml.safe_load(path.read_text())
    assert config["num_processes"] >= 2 and config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)
