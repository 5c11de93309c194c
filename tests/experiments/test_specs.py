"""The shipped experiment specs: each dry-runs (it parses, its functions import, its argument names are the run
function's); and a typo in a variant's argument fails the dry run naming the key and the argument meant."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trl_mtp import cli
from trl_mtp.experiments.spec import parse_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


def test_specs_are_shipped():
    assert len(SPECS) >= 5


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_dry_runs(spec, tmp_path, capsys):
    assert cli.main(["experiment", str(spec), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "estimated time" in out and f"out: {tmp_path}" in out


def typo_spec(tmp_path) -> Path:
    raw = yaml.safe_load((SPECS[0].parent / "rl_compare.yaml").read_text())
    raw["variants"]["PPO"]["lerning_rate"] = 1e-3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_variant_key_typo_fails_the_dry_run(tmp_path, capsys, monkeypatch):
    argv = ["experiment", str(typo_spec(tmp_path)), "--dry-run", "--out", str(tmp_path / "runs")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "trl-mtp experiment: error: variant 'PPO': 'lerning_rate' is not an argument of "
        "trl_mtp.experiments.rl_runs:run_rl; did you mean 'learning_rate'?"
    )
    # without the check the typo passes the dry run (and would fail, or be ignored, hours into the grid)
    monkeypatch.setattr("trl_mtp.experiments.spec.check_argument_names", lambda spec: None)
    assert cli.main(argv) == 0


def spec_with(run: str, **fields) -> dict:
    return {"name": "x", "run": run, "out": "runs", "seeds": [0], "variants": {"A": fields}}


def named_only(base_dir, out_dir, *, seed, steps=1):
    return {}


def takes_anything(base_dir, out_dir, *, seed, **kwargs):
    return {}


def test_run_functions_without_kwargs_list_their_arguments(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "spec_fixture", sys.modules[__name__])
    with pytest.raises(ValueError, match=r"'stesp' is not an argument .* did you mean 'steps'"):
        parse_spec(spec_with("spec_fixture:named_only", stesp=3))
    with pytest.raises(ValueError, match=r"'zzz' is not an argument .*its arguments: seed, steps"):
        parse_spec(spec_with("spec_fixture:named_only", zzz=3))
    # a function taking **kwargs without saying where they go: nothing to check against
    assert parse_spec(spec_with("spec_fixture:takes_anything", zzz=3)).variants["A"] == {"zzz": 3}
