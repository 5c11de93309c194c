"""The training subcommands: every MTP field in --help, bad values as one line, and a YAML config run end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TRAINING_COMMANDS = ["sft", "ppo", "grpo", "rloo", "dpo"]


def trl_mtp(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trl_mtp.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_help_documents_every_mtp_field(command):
    done = trl_mtp(command, "--help")
    assert done.returncode == 0, done.stderr
    for name in (
        "--head_type",
        "--num_mtp_heads",
        "--mode",
        "--decoupled_target",
        "--mtp_lambda",
        "--mtp_lambda_schedule",
        "--mtp_every_n_steps",
        "--mtp_window_schedule",
        "--freeze_base",
        "--mtp_depth_decay",
        "--config",
    ):
        assert name in done.stdout, (command, name)


@pytest.mark.parametrize(
    "command, args, named",
    [
        ("sft", ["--head_type", "lstm"], "head_type"),
        ("sft", ["--mtp_every_n_steps", "0"], "mtp_every_n_steps"),
        ("sft", ["--num_mtp_heads", "two"], "num_mtp_heads"),
        ("ppo", ["--mode", "both"], "mode"),
        ("grpo", ["--mtp_window_schedule", "up"], "mtp_window_schedule"),
        ("rloo", ["--mtp_lambda", "-1"], "mtp_lambda"),
        ("dpo", ["--decoupled_target", "logits"], "decoupled_target"),
    ],
)
def test_bad_value_is_one_line(command, args, named):
    done = trl_mtp(command, *args, "--output_dir", "/tmp/unused")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_missing_model_path_is_one_line(tmp_path):
    done = trl_mtp("sft", "--model", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out"))
    assert done.returncode == 2 and "nope" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sft", "grpo", "dpo"])
def test_yaml_config_run_end_to_end(command, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\nmax_steps: 2\nper_device_train_batch_size: 4\n"
        'dataset_name: sort\ntask_params: \'{"length": 3, "max_value": 9}\'\nnum_train_examples: 32\n'
        "num_eval_examples: 8\npretrain_steps: 5\nhead_type: sequential\nnum_mtp_heads: 2\nreport_to: none\n"
        "activation_checkpointing: false\n"
        + ("num_generations: 4\nmax_completion_length: 8\n" if command == "grpo" else "")
    )
    done = trl_mtp(command, "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sort eval exact-match" in done.stdout
    assert (tmp_path / "out" / "mtp_heads.safetensors").exists()
    assert (tmp_path / "out" / "mtp_config.json").exists()
