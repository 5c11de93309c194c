"""The example accelerate configs (examples/accelerate/*.yaml). The DDP one starts a real 2-process MTP-SFT run here, on
CPU (gloo); the FSDP2 and DeepSpeed ones run in tests/trainers/test_sharded_engines.py (FSDP2 and ZeRO-2 pass against a
1-process run; ZeRO-3 is a recorded expected failure). Every config is also checked to parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from two_process import launch

from trl_mtp import MTPForCausalLM

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
RUN = Path(__file__).resolve().parent / "trainers" / "ddp_sft_run.py"  # the 2-process SFT run of test_multiprocess


@pytest.mark.slow
def test_two_process_sft_with_the_ddp_config(tmp_path, tokenizer):
    reports = launch(RUN, str(tmp_path / "run"), port=29571, config_file=EXAMPLES / "ddp.yaml")
    assert {report["mode"] for report in reports} == {"MULTI_CPU"}  # the config's MULTI_GPU DDP, on CPU (gloo)
    model = MTPForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert torch.isfinite(model.mtp_logits(torch.tensor([[1, 2, 3]]))).all()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_parse(path):
    config = yaml.safe_load(path.read_text())
    assert config["num_processes"] >= 2 and config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)
