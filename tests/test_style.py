"""Style is enforced in CI: `ruff check` and `ruff format --check` with the project's settings (pyproject.toml)
pass on the whole repository. The same hooks run on each commit through .pre-commit-config.yaml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
pytestmark = pytest.mark.skipif(RUFF is None, reason="ruff is not installed (it comes with the `test` extra)")


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([RUFF, *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_repository_passes(command):
    done = ruff(*command, "--config", str(ROOT / "pyproject.toml"), ".")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "command, source",
    [
        (["check"], "import os\n"),  # an unused import
        (["check"], "import torch\nimport os\n"),  # imports out of order
        (["format", "--check"], "x = {  'a':1 }\n"),  # not formatted
    ],
    ids=["unused-import", "import-order", "format"],
)
def test_settings_catch_a_bad_file(tmp_path, command, source):
    """The settings used above do fail a file that breaks them (the test above could not pass vacuously)."""
    (tmp_path / "bad.py").write_text(source)
    done = ruff(*command, "--config", str(ROOT / "pyproject.toml"), "bad.py", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
