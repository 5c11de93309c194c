"""Shards of a grid: disjoint, together the whole grid, read back by the runner's table; and the per-seed files
with their t-intervals over paired seeds."""

import csv
import json

import pytest
import yaml

from trl_mtp.experiments.run_shard import run_shard
from trl_mtp.experiments.seed_summary import t_interval, write_seed_files

CALLS: list[tuple] = []


def fake_run(base_dir, out_dir, *, seed, quality):
    CALLS.append((quality, seed))
    correct = [int((i * 7 + seed) % 10 < quality * 10) for i in range(20)]
    return {"seed": seed, "correct": correct, "curve": [{"step": 1, "exact": quality}]}


@pytest.fixture
def spec(tmp_path):
    CALLS.clear()
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "toy",
                "run": f"{__name__}:fake_run",
                "out": str(tmp_path / "runs"),
                "seeds": [0, 1, 2],
                "variants": {"low": {"quality": 0.3}, "high": {"quality": 0.6}},
                "baseline": "low",
                "metrics": [{"name": "acc", "items": "correct"}],
            },
            sort_keys=False,
        )
    )
    return str(path)


def test_shards_are_disjoint_and_cover_the_grid(spec):
    for shard in range(3):
        assert run_shard(spec, shard, 3) == 0
    assert sorted(CALLS) == sorted((q, s) for q in (0.3, 0.6) for s in range(3))  # each run exactly once
    assert CALLS[:2] == [(0.3, 0), (0.6, 1)]  # shard 0: grid indices 0 and 3 (seed-major)
    run_shard(spec, 0, 3)
    assert len(CALLS) == 6  # finished runs are not run again


def test_seed_files_pair_the_seeds(spec, tmp_path):
    for shard in range(2):
        run_shard(spec, shard, 2)
    summary = write_seed_files(spec, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "per_seed.csv").read_text().splitlines()))
    by = {(r["variant"], int(r["seed"])): float(r["acc"]) for r in rows}
    diffs = [by[("high", s)] - by[("low", s)] for s in range(3)]
    got = summary["variants"]["high"]["acc"]["diff_vs_baseline"]
    assert got == pytest.approx(t_interval(diffs))
    assert "diff_vs_baseline" not in summary["variants"]["low"]["acc"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["method"].startswith("t-interval")
    assert (tmp_path / "out" / "curves.csv").read_text().count("\n") == 1 + 6


def test_bad_shard(spec):
    with pytest.raises(ValueError, match="shard=3"):
        run_shard(spec, 3, 3)
    with pytest.raises(ValueError, match="unknown variant 'mid'"):
        run_shard(spec, 0, 1, ["mid"])
