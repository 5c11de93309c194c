"""The docs' experiment tables are their committed result files: every `<!-- results:SPEC -->` block in docs/*.md is
what docs/results/SPEC/runs.csv gives (recomputed, not copied), and each table.json holds the same numbers. A number
changed by hand in a doc, or a result file changed without its table, is caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trl_mtp.experiments.doc_tables import BLOCK, check_results, render, sync
from trl_mtp.experiments.spec import RESULTS_ROOT, Metric, Run, Spec
from trl_mtp.experiments.tables import write_outputs

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_tables_are_their_result_files(monkeypatch):
    monkeypatch.chdir(ROOT)  # as `python -m trl_mtp.experiments.doc_tables` runs: the blocks name relative paths
    docs = sorted(Path("docs").glob("*.md"))
    stale, broken = sync(docs, RESULTS_ROOT)
    assert stale == [] and broken == []
    used = {m["name"] for path in docs for m in BLOCK.finditer(path.read_text())}
    committed = {p.parent.name for p in RESULTS_ROOT.glob("*/table.json")}
    assert committed and committed <= used, f"result folders no doc shows: {committed - used}"


def toy_results(tmp_path: Path) -> Path:
    """A finished 3-seed grid of two variants, written as result files; returns the results root."""
    spec = Spec(
        name="toy",
        run="m:f",
        out=tmp_path / "runs",
        seeds=[0, 1, 2],
        variants={"low": {}, "high": {}, "mid": {}},
        baseline="low",
        metrics=[Metric("acc", "correct", "items"), Metric("reward", "reward", "scalar", format=".2f")],
    )
    results = {}
    for seed in spec.seeds:
        for variant, quality in (("low", 0.3), ("high", 0.7), ("mid", 0.5)):
            rng = np.random.default_rng(seed)
            correct = (rng.random(30) < quality).astype(int).tolist()
            results[Run(None, variant, seed, tmp_path / variant / str(seed), {})] = {
                "correct": correct,
                "reward": quality + 0.01 * seed * (1 + quality),
            }
    write_outputs(
        spec,
        results,
        tmp_path / "results" / "toy",
        plots=tmp_path / "runs",
        total_runs=9,
        command="trl-mtp experiment toy.yaml",
    )
    return tmp_path / "results"


def test_blocks_are_written_then_checked(tmp_path):
    root = toy_results(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# A doc\n\n<!-- results:toy -->\n<!-- /results -->\n\nText.\n\n"
        '<!-- results:toy baseline="mid" metrics="reward" variants="high|mid" -->\nold\n<!-- /results -->\n'
    )
    stale, broken = sync([doc], root, write=True)
    assert len(stale) == 2 and broken == []
    text = doc.read_text()
    assert "| variant | seeds | reward [90% CI] | diff vs mid [90% CI] |" in text
    assert "| high | 3 | 0.72 [0.69, 0.75] | +0.20 [+0.20, +0.21] |" in text  # reward is t over 0.7, 0.717, 0.734
    assert "3 seeds per row (seeds 0-2). 90% intervals: per-run metrics, Student t" in text
    assert "made by `trl-mtp experiment toy.yaml`" in text and "old" not in text
    assert sync([doc], root) == ([], [])  # written once, up to date

    edited = text.replace("| high | 3 | 0.72 [0.69, 0.75] |", "| high | 3 | 0.72 [0.70, 0.75] |")
    doc.write_text(edited)
    assert sync([doc], root)[0] == [f"{doc}: results:toy is not what its result files give"]


def test_result_files_that_disagree_are_caught(tmp_path):
    root = toy_results(tmp_path)
    assert check_results(root / "toy") == []
    runs = root / "toy" / "runs.csv"
    lines = runs.read_text().splitlines()
    lines[-1] = lines[-1][: lines[-1].rindex(",")] + ",0.99"  # mid seed 2's reward changed, its table not
    runs.write_text("\n".join(lines) + "\n")
    problems = check_results(root / "toy")
    assert problems == [f"{root / 'toy' / 'table.json'}: mid / reward differs from runs.csv"]
    table = json.loads((root / "toy" / "table.json").read_text())
    table["stats"] = table["stats"][:-1]  # a row of table.json lost: the recomputed one has no match
    (root / "toy" / "table.json").write_text(json.dumps(table))
    assert any("mid / reward differs" in p for p in check_results(root / "toy"))
    runs.write_text(runs.read_text().replace("mid,2,0.", "mid,2,0.9", 1))  # an item mean that is not its items'
    with pytest.raises(ValueError, match="mid seed 2: acc is 0.9"):
        check_results(root / "toy")


@pytest.mark.parametrize(
    "options,bad",
    [
        ({"baseline": "nope"}, "'nope'"),
        ({"metrics": "acc|nope"}, "'nope'"),
        ({"variants": "hgh"}, "'hgh'"),
    ],
)
def test_bad_options_name_the_bad_value(tmp_path, options, bad):
    with pytest.raises(ValueError, match=bad):
        render("toy", options, toy_results(tmp_path))


def test_unknown_option_and_missing_folder(tmp_path):
    root = toy_results(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text('<!-- results:toy colour="red" -->\n<!-- /results -->\n')
    with pytest.raises(ValueError, match="'colour'"):
        sync([doc], root)
    doc.write_text("<!-- results:other -->\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="other"):
        sync([doc], root)
