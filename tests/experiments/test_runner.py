"""`trl-mtp experiment`: a tiny spec whose run function lives in this module runs end to end through the CLI
dispatcher (result files, plots), resumes, survives a failing run, prints its dry run, and refuses bad specs and
finished runs made with other arguments. The last test runs a real (tiny) SFT spec."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from trl_mtp.cli import main as cli
from trl_mtp.experiments.intervals import seeds_items_interval, t_interval
from trl_mtp.experiments.runner import code_version

CALLS: list[tuple] = []


def fake_run(base_dir, out_dir, *, seed, quality, n_items=40, fail=False):
    """A stand-in for a training run: per-item correctness drawn at rate `quality`, and a scalar."""
    CALLS.append((quality, seed))
    if fail:
        raise RuntimeError("this variant always breaks")
    correct = (np.random.default_rng(seed).random(n_items) < quality).astype(int).tolist()
    return {
        "seed": seed,
        "correct": correct,
        "reward": quality + 0.01 * seed,
        "train_seconds": 2.0,
        "base_dir": base_dir,
    }


def write_spec(tmp_path, **changes) -> str:
    spec = {
        "name": "toy",
        "description": "two variants of a fake run",
        "run": f"{__name__}:fake_run",
        "base": {"path": "some/base"},
        "out": str(tmp_path / "runs"),
        "results": str(tmp_path / "results"),
        "seeds": [0, 1],
        "common": {"n_items": 40},
        "variants": {"low": {"quality": 0.3}, "high +x": {"quality": 0.7}},
        "baseline": "low",
        "metrics": [{"name": "acc", "items": "correct"}, {"name": "reward", "scalar": "reward"}],
    }
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.fixture(autouse=True)
def no_calls():
    CALLS.clear()


def test_grid_runs_resumes_and_writes_the_table(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert cli(["experiment", spec, "--no-progress"]) == 0
    assert CALLS == [(0.3, 0), (0.7, 0), (0.3, 1), (0.7, 1)]  # seed-major
    out = tmp_path / "runs"
    run_dir = out / "high_plusx" / "seed1"
    assert json.loads((run_dir / "result.json").read_text())["base_dir"] == "some/base"
    args = json.loads((run_dir / "run_args.json").read_text())
    assert args["kwargs"] == {"n_items": 40, "quality": 0.7, "seed": 1}

    # the numbers are the intervals': seeds x items for per-item metrics, t over seeds for per-run ones
    high = [fake_run(None, None, seed=s, quality=0.7)["correct"] for s in (0, 1)]
    low = [fake_run(None, None, seed=s, quality=0.3)["correct"] for s in (0, 1)]
    results = tmp_path / "results"
    table = json.loads((results / "table.json").read_text())
    stats = {(s["variant"], s["metric"]): s for s in table["stats"]}
    assert stats["high +x", "acc"]["value"] == pytest.approx(seeds_items_interval(high))
    assert stats["high +x", "acc"]["diff"] == pytest.approx(
        seeds_items_interval([np.subtract(h, lo) for h, lo in zip(high, low)])
    )
    assert stats["high +x", "reward"]["value"] == pytest.approx(t_interval([0.7, 0.71]))
    assert stats["high +x", "reward"]["diff"] == pytest.approx(t_interval([0.4, 0.4]))
    assert stats["low", "acc"]["diff"] is None  # the baseline has no difference to itself
    assert table["command"].startswith("trl-mtp experiment ") and table["finished_runs"] == 4
    assert table["commit"] == code_version()
    runs = list(csv.DictReader((results / "runs.csv").read_text().splitlines()))
    assert [(r["variant"], r["seed"]) for r in runs] == [("low", "0"), ("low", "1"), ("high +x", "0"), ("high +x", "1")]
    assert runs[3]["acc (items)"] == " ".join(map(str, high[1])) and float(runs[3]["reward"]) == 0.71

    table = (results / "table.md").read_text()
    assert "| variant | seeds | acc [90% CI] | diff vs low [90% CI] |" in table
    assert "| high +x | 2 |" in table and "Finished runs: 4 of 4" in table
    assert "2 seeds per row (seeds 0, 1). 90% intervals: per-run metrics, Student t" in table
    assert (out / "acc.png").stat().st_size > 1000 and (out / "reward.png").is_file()
    assert "| low | 2 |" in capsys.readouterr().out

    CALLS.clear()
    assert cli(["experiment", spec, "--no-progress"]) == 0  # resume: everything is finished
    assert CALLS == []
    assert cli(["experiment", spec, "--no-progress", "--seeds", "0", "1", "2", "--only", "high +x"]) == 0
    assert CALLS == [(0.3, 2), (0.7, 2)]  # --only keeps the baseline: its runs are what the diff needs


def test_one_failing_variant_does_not_stop_the_others(tmp_path, capsys):
    spec = write_spec(
        tmp_path, variants={"low": {"quality": 0.3}, "broken": {"quality": 0.5, "fail": True}, "high": {"quality": 0.7}}
    )
    assert cli(["experiment", spec, "--no-progress"]) == 1
    assert len(CALLS) == 6  # every run was tried
    out = tmp_path / "runs"
    assert "always breaks" in (out / "broken" / "seed0" / "error.txt").read_text()
    assert not (out / "broken" / "seed0" / "result.json").exists()
    failures = (out / "failures.txt").read_text().splitlines()
    assert len(failures) == 2 and failures[0].startswith("broken seed 0: RuntimeError")
    err = capsys.readouterr().err
    assert "2 run(s) failed: broken seed 0; broken seed 1" in err
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| high | 2 |" in table and "broken" not in table and "Finished runs: 4 of 6" in table


def test_dry_run_lists_the_grid_and_estimates_time(tmp_path, capsys):
    spec = write_spec(tmp_path, estimate_seconds_per_run=30)
    assert cli(["experiment", spec, "--no-progress", "--seeds", "0", "--only", "low"]) == 0
    capsys.readouterr()
    CALLS.clear()
    assert cli(["experiment", spec, "--dry-run"]) == 0
    assert CALLS == []
    out = capsys.readouterr().out
    assert "toy: 4 runs (2 variants x 2 seeds), 1 finished, 3 to run" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("low", "high"))}
    assert lines["low"] == ["low", "done", "to", "run", "2"]  # s/run from the finished run's train_seconds
    assert lines["high"][-2:] == ["30", "(spec)"]  # no finished run of its own: the spec's estimate
    assert "estimated time for the 3 runs to do: 62 s" in out


def test_finished_runs_made_with_other_arguments_are_refused(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert cli(["experiment", spec, "--no-progress"]) == 0
    capsys.readouterr()
    changed = write_spec(tmp_path, common={"n_items": 50})
    assert cli(["experiment", changed, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "low/seed0 was made with other arguments than the spec's (n_items)" in err and len(err.splitlines()) == 1
    # a run from before run_args.json: the arguments its result echoes (here: seed) are still checked
    old = tmp_path / "old"
    (old / "low" / "seed0").mkdir(parents=True)
    (old / "low" / "seed0" / "result.json").write_text(json.dumps({"seed": 5, "correct": [1], "reward": 1.0}))
    assert cli(["experiment", spec, "--out", str(old), "--dry-run"]) == 2
    assert "(seed)" in capsys.readouterr().err
    (old / "low" / "seed0" / "result.json").write_text(json.dumps({"seed": 0, "correct": [1], "reward": 1.0}))
    assert cli(["experiment", spec, "--out", str(old), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "predate run_args.json" in captured.out and "1 finished" in captured.out


@pytest.mark.parametrize(
    "changes,bad",
    [
        ({"varients": {}}, "'varients'"),
        ({"run": "tests_nowhere.module:run"}, "tests_nowhere.module"),
        ({"run": f"{__name__}:no_such_function"}, "no_such_function"),
        ({"baseline": "NTP"}, "'NTP'"),
        ({"metrics": [{"name": "acc", "items": "tasks..correct"}]}, "tasks..correct"),
        ({"metrics": [{"name": "acc", "items": "correct", "scalar": "reward"}]}, "exactly one"),
        ({"metrics": [{"name": "acc", "items": "correct", "format": "+.3f"}]}, "+.3f"),
        ({"seeds": [0, 0]}, "[0, 0]"),
        ({"common": {"seed": 3}}, "'seed'"),
        ({"base": {"run": "trl_mtp.embedded.pretrain:no_such_base"}}, "no_such_base"),
        ({"results": 3}, "results: expected a folder, got 3"),
    ],
)
def test_bad_spec_is_one_line_before_anything_runs(tmp_path, capsys, changes, bad):
    assert cli(["experiment", write_spec(tmp_path, **changes)]) == 2
    assert CALLS == []
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and "error" in lines[0], lines


def test_result_files_go_to_docs_results_unless_the_spec_names_a_folder(tmp_path):
    from trl_mtp.experiments.spec import load_spec

    assert load_spec(write_spec(tmp_path)).results_dir == tmp_path / "results"
    spec = yaml.safe_load(Path(write_spec(tmp_path)).read_text())
    del spec["results"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert load_spec(tmp_path / "spec.yaml").results_dir == Path("docs/results/toy")


def test_metric_path_no_finished_run_has_is_refused(tmp_path, capsys):
    assert cli(["experiment", write_spec(tmp_path), "--no-progress", "--seeds", "0"]) == 0
    CALLS.clear()
    typo = write_spec(tmp_path, metrics=[{"name": "acc", "items": "corect"}])
    assert cli(["experiment", typo, "--no-progress"]) == 2
    assert CALLS == [] and "'corect'" in capsys.readouterr().err
    assert cli(["experiment", write_spec(tmp_path), "--only", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err


def fake_run_with_extra(base_dir, out_dir, *, seed, quality, extra=False, n_items=40):
    """`fake_run`, plus a metric that only the `extra` variants report (as a world model's metrics)."""
    result = fake_run(base_dir, out_dir, seed=seed, quality=quality, n_items=n_items)
    return {**result, "extra_metric": 0.5} if extra else result


def test_metric_of_variants_not_run_yet_is_not_a_typo(tmp_path):
    run = f"{__name__}:fake_run_with_extra"
    metrics = [{"name": "acc", "items": "correct"}, {"name": "extra", "scalar": "extra_metric"}]
    first = write_spec(tmp_path, run=run, metrics=metrics)
    assert cli(["experiment", first, "--no-progress"]) == 0  # the grid before the variant with the extra metric
    CALLS.clear()
    grown = write_spec(
        tmp_path,
        run=run,
        metrics=metrics,
        variants={"low": {"quality": 0.3}, "high +x": {"quality": 0.7}, "with extra": {"quality": 0.5, "extra": True}},
    )
    assert cli(["experiment", grown, "--no-progress"]) == 0  # only the new variant's runs are missing: they run
    assert CALLS == [(0.5, 0), (0.5, 1)]
    assert "0.500" in (tmp_path / "results" / "table.md").read_text()


def test_task_axis_folders_and_rows(tmp_path):
    spec = write_spec(
        tmp_path,
        seeds=[0],
        tasks={"easy": {"n_items": 10}, "hard": {"n_items": 30}},
        metrics=[{"name": "acc", "items": "correct"}],
    )
    assert cli(["experiment", spec, "--no-progress"]) == 0
    out = tmp_path / "runs"
    assert len(json.loads((out / "hard" / "high_plusx" / "seed0" / "result.json").read_text())["correct"]) == 30
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| task | variant | seeds |" in table and "| hard | high +x | 1 |" in table
    assert "with one seed, per-item intervals hold the item spread only" in table
    assert next(csv.DictReader((tmp_path / "results" / "runs.csv").read_text().splitlines()))["task"] == "easy"


def test_a_real_sft_spec_end_to_end(tmp_path, capsys):
    """run_sft from a (cached, 5-step) pretrained base: NTP vs MTP, a few steps, through the whole pipeline (about
    10 s), with the progress bar on."""
    spec = write_spec(
        tmp_path,
        run="trl_mtp.experiments.sft_runs:run_sft",
        seeds=[0],
        base={
            "run": "trl_mtp.embedded.pretrain:pretrain_base",
            "args": {"preset": "tiny-llama", "task": "copy", "steps": 5, "seq_len": 32, "batch_size": 4},
        },
        common={
            "steps": 3,
            "eval_n": 4,
            "n_train": 16,
            "tasks": {"copy": {"length": 3}},
            "logging_steps": 1,
            "per_device_train_batch_size": 4,
        },
        variants={"NTP": {"mtp": None}, "sequential D=2": {"mtp": {"head_type": "sequential", "num_mtp_heads": 2}}},
        baseline="NTP",
        metrics=[
            {"name": "copy acc", "items": "tasks.copy.correct"},
            {"name": "train loss", "scalar": "final_train_loss"},
        ],
    )
    assert cli(["experiment", spec]) == 0
    assert "2/2" in capsys.readouterr().err  # the progress bar's last state
    stats = json.loads((tmp_path / "results" / "table.json").read_text())["stats"]
    assert [(s["variant"], s["metric"]) for s in stats] == [
        ("NTP", "copy acc"),
        ("NTP", "train loss"),
        ("sequential D=2", "copy acc"),
        ("sequential D=2", "train loss"),
    ]
    assert json.loads((tmp_path / "runs" / "sequential_D2" / "seed0" / "result.json").read_text())["steps"] == 3


def test_code_version_is_the_checkout_commit():
    package = Path(__file__).resolve().parents[2] / "trl_mtp"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert code_version().split()[0] == head.stdout.strip()


def test_metric_paths_index_lists():
    from trl_mtp.experiments.tables import lookup

    result = {"accept": [0.9, 0.6], "metrics": {"wm/cos": 0.5}}
    assert lookup(result, ["accept", "1"]) == 0.6
    assert lookup(result, ["metrics", "wm/cos"]) == 0.5
    assert lookup(result, ["accept", "2"]) is None and lookup(result, ["metrics", "0"]) is None
