"""The CLI through a real subprocess: help, `tasks`, and bad input ending as one line with exit code 2."""

import subprocess
import sys

import pytest

from trl_mtp.cli import COMMANDS


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trl_mtp.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_tasks_shows_every_task():
    from trl_mtp.embedded.tasks import TASKS

    result = run_cli("tasks")
    assert result.returncode == 0, result.stderr
    for name in TASKS:
        assert name in result.stdout
    assert "graph:" in result.stdout and "completion:" in result.stdout


@pytest.mark.parametrize(
    "args,bad",
    [
        (["pretrain", "--task", "nope", "--steps", "1"], "nope"),
        (["pretrain", "--preset", "giant-llama", "--steps", "1"], "giant-llama"),
        (["pretrain", "--steps", "-5"], "-5"),
        (["pretrain", "--bogus"], "--bogus"),
        (["demo", "--model", "./no/such/model"], "./no/such/model"),
        (["demo", "--eval-n", "0"], "0"),
        (["tasks", "--seed", "x"], "'x'"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_input_is_one_line(args, bad):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and "error" in lines[0], result.stderr


def test_pretrain_writes_a_model(tmp_path):
    result = run_cli(
        "pretrain",
        "--preset",
        "tiny-gpt2",
        "--task",
        "sort",
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "base"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "base")
    assert (tmp_path / "base" / "config.json").exists() and (tmp_path / "base" / "pretrain_info.json").exists()
