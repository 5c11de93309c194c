"""The example accelerate configs (examples/accelerate/*.yaml). The DDP one starts a real 2-process MTP-SFT run here, on
CPU (gloo); the FSDP2 and DeepSpeed ones run in tests/trainers/test_sharded_engines.py (FSDP2 and ZeRO-2 pass against a
1-process run; ZeRO-3 is a recorded expected failure). Every config is also checked to parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from two_process import TWO_PROCESS_GROUP, launch

from trl_mtp import MTPForCausalLM

pytestmark = pytest.mark.xdist_group(TWO_PROCESS_GROUP)  # one after another on one xdist worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
RUN = Path(__file__).resolve().parent / "trainers" / "ddp_sft_run.py"


@pytest.mark.slow
def test_two_process_sft_with_the_ddp_config(tmp_path, tokenizer):
    """MTP-SFT with DDP in 2 processes, launched with the example config: both ranks log the same all-reduced depth-1
    loss, and the result loads. (The command-line launch form, `--multi_gpu --num_processes 2`, runs in
    tests/trainers/test_ppo_trainer.py and the DDP references of tests/trainers/test_sharded_rl.py.)"""
    reports = launch(RUN, str(tmp_path / "run"), port=29571, config_file=EXAMPLES / "ddp.yaml")
    assert {report["mode"] for report in reports} == {"MULTI_CPU"}  # the config's MULTI_GPU DDP, on CPU (gloo)
    assert len({report["loss_depth_1"] for report in reports}) == 1
    model = MTPForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert torch.isfinite(model.mtp_logits(torch.tensor([[1, 2, 3]]))).all()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_parse(path):
    config = yaml.safe_load(path.read_text())
    assert config["num_processes"] >= 2 and config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)
