"""Experiments: resumable runs, grids, intervals over seeds, result files behind the docs' tables."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path


def resumable(run):
    """Decorate `run(base_dir, out_dir, **kwargs) -> dict`: the result is stored in `out_dir/result.json` and read
    back from there when the folder already holds one, so an interrupted grid resumes where it stopped."""

    @functools.wraps(run)
    def wrapper(base_dir, out_dir, **kwargs) -> dict:
        result_file = Path(out_dir) / "result.json"
        if result_file.exists():
            return json.loads(result_file.read_text())
        result = run(base_dir, Path(out_dir), **kwargs)
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result))
        return result

    return wrapper


def run_dir_name(label: str) -> str:
    """A folder name for a variant label ("WM +discrete 32x32" -> "WM_plusdiscrete_32x32"). Parentheses stay: the
    finished runs in runs/wm_ppo were named so ("WM control (losses off)" -> "WM_control_(losses_off)")."""
    return re.sub(r"[^\w.()-]", "", label.replace("+", "plus").replace("/", "-").replace(" ", "_"))
