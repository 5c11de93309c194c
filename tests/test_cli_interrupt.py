"""Ctrl-C loses nothing: SIGINT sent to a real `trl-mtp` process, then the same command run again resumes.

- `trl-mtp experiment`: a grid interrupted during its second run keeps the first; the rerun skips it.
- `trl-mtp sft`: the first Ctrl-C finishes the step, saves a checkpoint and stops; the rerun resumes from it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN_MODULE = """
import os, time
from pathlib import Path

def run(base_dir, out_dir, *, seed, x):
    with open(os.environ["CALLS"], "a") as f:
        f.write(f"{seed}\\n")
    while seed == 1 and Path(os.environ["HOLD"]).exists():  # the second run waits for the Ctrl-C
        time.sleep(0.05)
    return {"x": x, "seed": seed, "train_seconds": 0.0}
"""

SPEC = """name: interrupted
run: "grid_run:run"
out: runs
seeds: [0, 1, 2]
variants: {A: {x: 1}}
metrics: [{name: x, scalar: x}]
"""


REPO = Path(__file__).resolve().parents[1]


def env(**extra) -> dict:
    """The subprocess imports this checkout's trl_mtp whatever its working directory."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **extra}


def trl_mtp(*args, cwd, environ, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trl_mtp.cli", *args],
        cwd=cwd,
        env=environ,
        text=True,
        stdout=stdout,
        stderr=subprocess.PIPE,
        # a shell without job control starts background jobs with SIGINT ignored, and the ignore is inherited: give
        # the child the disposition a terminal gives it, or Python installs no KeyboardInterrupt and Ctrl-C is lost
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_interrupted(proc: subprocess.Popen, *named) -> str:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"trl-mtp {proc.args[3]}: interrupted:") and all(n in last for n in named), err
    return last


@pytest.mark.slow
def test_interrupted_experiment_resumes_skipping_finished_runs(tmp_path):
    (tmp_path / "grid_run.py").write_text(RUN_MODULE)
    (tmp_path / "spec.yaml").write_text(SPEC)
    calls, hold = tmp_path / "calls.txt", tmp_path / "hold"
    hold.touch()
    environ = env(CALLS=str(calls), HOLD=str(hold))
    command = ["experiment", "spec.yaml", "--no-progress", "--results", "results"]
    proc = trl_mtp(*command, cwd=tmp_path, environ=environ)
    wait_for(lambda: calls.exists() and "1" in calls.read_text().split(), 120, "the second run to start")
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc, "finished runs are kept")
    runs = tmp_path / "runs" / "A"
    assert (runs / "seed0" / "result.json").is_file() and not (runs / "seed1" / "result.json").exists()

    hold.unlink()
    again = trl_mtp(*command, cwd=tmp_path, environ=environ)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert calls.read_text().split() == ["0", "1", "1", "2"]  # seed 0 ran once: the rerun skipped it
    assert all((runs / f"seed{s}" / "result.json").is_file() for s in range(3))
    assert "Finished runs: 3 of 3" in (tmp_path / "results" / "table.md").read_text()


@pytest.mark.slow
def test_interrupted_sft_saves_a_checkpoint_and_resumes_from_it(tmp_path, tokenizer):
    from trl_mtp.embedded.presets import build_model

    base = tmp_path / "base"
    build_model("tiny-gpt2", len(tokenizer), tokenizer=tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "out"
    max_steps = 120
    command = [
        "sft",
        "--model",
        str(base),
        "--dataset_name",
        "sort",
        "--task_params",
        '{"length": 3, "max_value": 9}',
        "--num_train_examples",
        "64",
        "--num_eval_examples",
        "0",
        "--output_dir",
        str(out),
        "--max_steps",
        str(max_steps),
        "--per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--save_steps",
        "1000",
        "--report_to",
        "none",
        "--activation_checkpointing",
        "false",
        "--dataloader_pin_memory",
        "false",
        "--head_type",
        "parallel",
        "--num_mtp_heads",
        "1",
        "--learning_rate",
        "1e-3",
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as stdout:
        proc = trl_mtp(*command, cwd=tmp_path, environ=env(), stdout=stdout)
        wait_for(lambda: "'loss'" in log.read_text(), 300, "the first logged step")
        proc.send_signal(signal.SIGINT)
        line = assert_interrupted(proc, f"checkpoint in {out}", "run the same command again")
    step = int(re.search(r"stopped at step (\d+) of", line).group(1))
    assert 0 < step < max_steps and (out / f"checkpoint-{step}" / "mtp_heads.safetensors").is_file()

    again = trl_mtp(*command, cwd=tmp_path, environ=env())
    stdout, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in stdout
    # a restart would log every step again; the resumed run logs only the steps after the checkpoint
    logged = len(re.findall(r"'loss'", stdout))
    assert logged == max_steps - step, (logged, step)
    assert (out / "mtp_heads.safetensors").is_file()
