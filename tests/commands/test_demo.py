"""The demo end to end (tiny settings), and the resumable-run helper its stages rely on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trl_mtp.experiments import resumable, run_dir_name


def test_resumable_runs_once_and_reads_back(tmp_path):
    calls = []

    @resumable
    def run(base_dir, out_dir, *, x):
        calls.append(x)
        return {"x": x, "out": str(out_dir)}

    first = run("base", tmp_path / "a", x=1)
    again = run("base", tmp_path / "a", x=2)  # a finished folder is read back, not run again
    assert calls == [1] and first == again == {"x": 1, "out": str(tmp_path / "a")}
    assert run_dir_name("WM +discrete 32x32") == "WM_plusdiscrete_32x32"


@pytest.mark.slow
def test_demo_prints_the_table_and_writes_the_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_MTP_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "trl_mtp.cli",
        "demo",
        "--pretrain-steps",
        "5",
        "--sft-steps",
        "30",
        "--rl-steps",
        "2",
        "--eval-n",
        "4",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for row in (
        "tiny-llama base",
        "NTP-SFT",
        "MTP-SFT (sequential, D=2)",
        "head acc depth 2",
        "90% CI",
        "MTP-SFT -> PPO+MTP",
        "accepted length after RL",
    ):
        assert row in out, row
    assert re.findall(r"^\[(\d+)/8\] ", out, re.M) == [str(i) for i in range(1, 9)]  # one line per stage
    # the trainers' per-step log dicts go to train.log in each run folder, not to the terminal
    assert "'loss'" not in out and "'loss'" not in done.stderr
    logs = sorted((tmp_path / "cache").glob("demo-*/*/train.log"))
    assert len(logs) == 3 and all("'loss'" in log.read_text() or "objective/" in log.read_text() for log in logs)
    report = tmp_path / "report"
    assert f"report: {report / 'index.html'}" in out
    for name in ("NTP-SFT", "MTP-SFT_sequential_D=2", "PPO+MTP_on_sort"):
        assert (report / name / "index.html").is_file(), name
    page = (report / "index.html").read_text()
    assert "held-out results" in page and "PPO+MTP on sort: sampled tokens vs what each head predicted" in page
