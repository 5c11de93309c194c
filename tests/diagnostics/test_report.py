"""`trl-mtp report`: every expected plot of a tiny recorded run is written and non-empty, the HTML pages reference
only files that exist, runs are named by what they are and compared on their held-out results, an RL run's sampled
tokens are shown against the heads' predictions, and the page renders in headless chromium (scripts/setup.sh
installs it where it can; elsewhere the test is skipped and says why)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from trl_mtp import cli
from trl_mtp.bootstrap import bootstrap_ci
from trl_mtp.diagnostics.report import write_report

RUN_PLOTS = [
    "training_by_depth",
    "probe_by_depth",
    "entropy_histograms",
    "calibration",
    "acceptance",
    "attention",
    "weights",
    "consistency",
]
PNG = b"\x89PNG\r\n\x1a\n"


def references(page):
    return re.findall(r"(?:src|href)='([^']+)'", page.read_text())


@pytest.fixture(scope="module")
def report(recorded_run, tmp_path_factory):
    run_dir, _, _ = recorded_run
    out = tmp_path_factory.mktemp("report")
    # the same run twice: a comparison page with two runs (names made unique)
    assert cli.main(["report", str(run_dir), str(run_dir), "--out", str(out)]) == 0
    return out


def test_every_expected_plot_is_written(report):
    run_page = report / "sft-parallel"
    for name in RUN_PLOTS:
        png = run_page / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 2000 and png.read_bytes()[:8] == PNG, name
    html = (run_page / "index.html").read_text()
    assert all(f"{name}.png" in html for name in RUN_PLOTS)
    assert "predicted vs actual tokens" in html and "recorder overhead" in html
    for name in ("compare_by_depth", "compare_curves"):
        assert (report / f"{name}.png").stat().st_size > 2000


def test_pages_reference_only_existing_files(report):
    pages = [report / "index.html", report / "sft-parallel" / "index.html", report / "sft-parallel-2" / "index.html"]
    for page in pages:
        refs = references(page)
        assert refs, page
        for ref in refs:
            assert not ref.startswith(("http:", "https:", "//", "/")), ref
            assert (page.parent / ref).is_file(), f"{page} references missing {ref}"


def test_report_cli_prints_the_path_and_rejects_missing_runs(recorded_run, tmp_path, capsys):
    run_dir, _, _ = recorded_run
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "index.html")
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def fake_runs(root):
    """An NTP-SFT run (result.json and trainer_state.json only, as the demo's next-token run) and an RL run whose
    latest snapshot scored a sampled rollout: at t=1 the main head's top-1 is the sampled token, at t=2 it is not."""
    ntp = root / "ntp"
    ntp.mkdir()
    (ntp / "result.json").write_text(
        json.dumps(
            {
                "tasks": {"sort": {"accuracy": 0.5, "correct": [1, 0, 1, 0]}},
                "final_train_loss": 1.25,
                "train_seconds": 7.0,
            }
        )
    )
    (ntp / "trainer_state.json").write_text(
        json.dumps(
            {
                "log_history": [
                    {"step": 5, "loss": 2.0, "mean_token_accuracy": 0.4},
                    {"step": 10, "loss": 1.25, "mean_token_accuracy": 0.6},
                ]
            }
        )
    )
    rl = root / "rl"
    (rl / "diagnostics" / "snapshots").mkdir(parents=True)
    (rl / "diagnostics" / "meta.json").write_text(
        json.dumps(
            {"num_depths": 1, "head_type": "sequential", "vocab": {"tokens": ["tok_a", "tok_b", "tok_c", "tok_d"]}}
        )
    )
    targets = np.full((2, 1, 4), -100)
    targets[0, 0, 1:3] = [2, 3]  # the sampled tokens, as the main head's targets
    targets[1, 0, 1] = 3  # depth 1 at t=1 predicts the token after next
    ids = np.zeros((2, 1, 4, 3), dtype=np.int64)
    ids[0, 0, 1], ids[0, 0, 2], ids[1, 0, 1] = [2, 0, 1], [1, 3, 0], [3, 1, 0]
    np.savez(
        rl / "diagnostics" / "snapshots" / "step_0000002.npz",
        rollout_targets=targets,
        rollout_topk_ids=ids,
        rollout_topk_probs=np.full((2, 1, 4, 3), 0.25, dtype=np.float32),
    )
    (rl / "result.json").write_text(
        json.dumps({"accuracy": 0.5, "correct": [1, 0], "accept_before": 1.5, "accept_after": 1.25})
    )
    return ntp, rl


def test_runs_are_named_and_compared_on_their_results(tmp_path):
    ntp, rl = fake_runs(tmp_path)
    index = write_report([ntp, rl], tmp_path / "report", ["NTP-SFT", "PPO+MTP on sort"])
    page = index.read_text()
    assert (tmp_path / "report" / "NTP-SFT" / "index.html").is_file()
    assert "trl-mtp report: PPO+MTP on sort" in (tmp_path / "report" / "PPO+MTP_on_sort" / "index.html").read_text()
    low, high = bootstrap_ci([1, 0, 1, 0])[1:]
    table = page[page.index("held-out results") :]
    assert f"<td>0.500 [{low:.3f}, {high:.3f}]</td>" in table  # NTP-SFT's sort accuracy with its CI
    assert "<th>NTP-SFT</th>" in table and "<th>PPO+MTP on sort</th>" in table
    assert "<td>1.500</td>" in table and "<td>1.250</td>" in table  # accepted length before / after RL
    # the RL run's sampled tokens against the heads' predictions, on the comparison page
    rollout = page[page.index("PPO+MTP on sort: sampled tokens vs what each head predicted") :]
    rows = re.findall(r"<tr><td>(\d+)</td>(.*?)</tr>", rollout)
    assert [t for t, _ in rows] == ["1", "2"]
    assert "<td>tok_c</td><td class='ok'>tok_c (0.25)" in rows[0][1]  # top-1 is the sampled token
    assert "<td>tok_d</td><td class='miss'>tok_b (0.25)" in rows[1][1]  # top-1 is another token
    assert (tmp_path / "report" / "compare_curves.png").stat().st_size > 2000  # NTP's curve alone is a comparison


def test_report_cli_names_runs_one_each(tmp_path, capsys):
    ntp, rl = fake_runs(tmp_path)
    assert cli.main(["report", str(ntp), str(rl), "--names", "only one", "--out", str(tmp_path / "r")]) == 2
    assert "--names: 1 names for 2 runs" in capsys.readouterr().err


def chromium_problem() -> str | None:
    """Why the rendering test cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "chromium is not installed (scripts/setup.sh installs it when run as root where apt-get exists)"
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--version"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return f"chromium does not start: {(done.stderr or done.stdout).strip().splitlines()[:1]}"
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    problem = chromium_problem()
    if problem:
        pytest.skip(problem)
    shot = tmp_path / "page.png"
    page = report / "sft-parallel" / "index.html"
    done = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10000
    # resource errors (a missing image) are logged by the network stack
    assert "ERR_FILE_NOT_FOUND" not in done.stderr, done.stderr[-2000:]
