"""Reading a run folder: the trainer's log history and what `MTPRecorder` and `trl-mtp probe` wrote.

A run folder is a trainer `output_dir`: the log history comes from `trainer_state.json` (there or in the latest
`checkpoint-*`), else from `diagnostics/log_history.json` (written by the recorder, which also covers runs saved
with `save_strategy="no"`); the longest one wins. Diagnostics live in `diagnostics/` (or the folder itself). A run of
the experiment runner or the demo also has `result.json` (held-out scores): the report compares runs on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RunData:
    name: str
    path: Path
    log_history: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    decoding: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    consistency: dict | None = None
    result: dict | None = None  # result.json of an experiment or demo run
    snapshot: dict | None = None  # arrays of the latest snapshot
    snapshot_step: int | None = None

    @property
    def num_depths(self) -> int:
        if self.meta:
            return self.meta["num_depths"]
        depths = [int(k.rsplit("_", 1)[1]) for h in self.log_history for k in h if k.startswith("mtp/loss_depth_")]
        return max(depths, default=0)

    def token(self, token_id: int) -> str:
        """Readable token string (byte-level BPE markers shown as visible symbols)."""
        tokens = self.meta.get("vocab", {}).get("tokens")
        if tokens is None or not 0 <= token_id < len(tokens):
            return f"#{token_id}"
        return tokens[token_id].replace("\u0120", "\u2423").replace("\u010a", "\u21b5")


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_history_of(run: Path, diagnostics: Path) -> list[dict]:
    candidates = [run / "trainer_state.json"] + sorted(
        run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1])
    )
    histories = [read_json(p, {}).get("log_history", []) for p in candidates]
    histories.append(read_json(diagnostics / "log_history.json", []))
    return max(histories, key=len)


def load_run(path, name: str | None = None) -> RunData:
    """Everything the report needs from one run folder; a folder with nothing readable raises FileNotFoundError."""
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
    diagnostics = run if (run / "records.jsonl").is_file() else run / "diagnostics"
    data = RunData(name=name or run.resolve().name, path=run)
    data.log_history = log_history_of(run, diagnostics)
    data.meta = read_json(diagnostics / "meta.json", {})
    data.records = read_jsonl(diagnostics / "records.jsonl")
    data.decoding = read_jsonl(diagnostics / "decoding.jsonl")
    data.summary = read_json(diagnostics / "summary.json", {})
    data.consistency = read_json(diagnostics / "consistency.json")
    data.result = read_json(run / "result.json")
    snapshots = sorted((diagnostics / "snapshots").glob("step_*.npz"))
    if snapshots:
        with np.load(snapshots[-1]) as npz:
            data.snapshot = {k: npz[k] for k in npz.files}
        data.snapshot_step = int(snapshots[-1].stem.split("_")[1])
    if not (data.log_history or data.records or data.consistency or data.result):
        raise FileNotFoundError(
            f"{run}: no trainer_state.json, result.json, diagnostics/records.jsonl or consistency.json found"
        )
    return data


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a logged metric."""
    points = [(h["step"], h[key]) for h in log_history if key in h and h[key] is not None and "step" in h]
    return [s for s, _ in points], [float(v) for _, v in points]


REWARD_KEYS = ("objective/scores", "reward", "objective/rlhf_reward", "rewards/chosen", "rewards/margins")


def reward_keys(log_history: list[dict]) -> list[str]:
    """Reward-like metrics present in the log: TRL's and PPO's names, and `rewards/<func>/mean`."""
    present = {k for h in log_history for k in h}
    named = sorted(k for k in present if k.startswith("rewards/") and k.endswith("/mean"))
    return [k for k in REWARD_KEYS if k in present] + [k for k in named if k not in REWARD_KEYS]
