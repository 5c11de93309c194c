"""`trl-mtp report`: every expected plot of a tiny recorded run is written and non-empty, the HTML pages reference
only files that exist, and the page renders in headless chromium where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from trl_mtp import cli

RUN_PLOTS = ["training_by_depth", "probe_by_depth", "entropy_histograms", "calibration", "acceptance", "attention",
             "weights", "consistency"]
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "page.png"
    page = report / "sft-parallel" / "index.html"
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2000",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10000
    # resource errors (a missing image) are logged by the network stack
    assert "ERR_FILE_NOT_FOUND" not in done.stderr, done.stderr[-2000:]
