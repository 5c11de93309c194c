"""Per-seed result files of a spec and t-intervals over seeds: the committed artifact behind a docs table.

    python -m trl_mtp.experiments.seed_summary SPEC.yaml OUT_DIR

writes `OUT_DIR/per_seed.csv` (one row per finished run: variant, seed, each metric's per-seed value: the mean of
an `items` metric, or the `scalar`) and `OUT_DIR/summary.json` (per variant and metric: seeds, mean and 90%
t-interval over the seed values; per variant against the spec's baseline: the same over the paired per-seed
differences, on the seeds both finished), and `OUT_DIR/curves.csv` when the results hold a learning curve (a
`curve` list of {step, metric: value} rows). The interval is mean +- t_{0.95, n-1} * sd / sqrt(n), nominal 90%:
the seed is the unit, so the run-to-run spread is in it.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path


def t_interval(values: list[float], level: float = 0.90) -> dict:
    """{n, mean, sd, low, high}: `intervals.t_interval` (mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)) with its n and
    sd, for the JSON a reader opens (no interval below two values)."""
    from trl_mtp.experiments.intervals import t_interval as mean_low_high

    mean, low, high = mean_low_high(values, confidence=level)
    n = len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "low": low, "high": high}


def per_seed_values(spec, results) -> dict[str, dict[int, dict[str, float]]]:
    """variant -> seed -> metric name -> the run's value (an items metric's mean)."""
    from trl_mtp.experiments.tables import metric_values

    table: dict[str, dict[int, dict[str, float]]] = {}
    for run, result in results.items():
        row = table.setdefault(run.variant, {}).setdefault(run.seed, {})
        for metric in spec.metrics:
            value = metric_values(metric, run, result)
            if value is not None:
                row[metric.name] = float(value.mean()) if metric.kind == "items" else float(value)
    return table


def summarize_seeds(spec, values: dict, level: float = 0.90) -> dict:
    """Per variant and metric: the t-interval over seeds, and over paired differences to the baseline."""
    out = {
        "spec": spec.name,
        "level": level,
        "method": "t-interval over per-seed values, mean +- t sd / sqrt(n)",
        "baseline": spec.baseline,
        "variants": {},
    }
    base = values.get(spec.baseline, {}) if spec.baseline else {}
    for variant in spec.variants:
        seeds = values.get(variant, {})
        entry = {}
        for metric in spec.metrics:
            own = [row[metric.name] for row in seeds.values() if metric.name in row]
            if not own:
                continue
            entry[metric.name] = {"value": t_interval(own, level)}
            paired = [
                row[metric.name] - base[s][metric.name]
                for s, row in sorted(seeds.items())
                if metric.name in row and metric.name in base.get(s, {})
            ]
            if variant != spec.baseline and metric.compare and paired:
                entry[metric.name]["diff_vs_baseline"] = t_interval(paired, level)
        out["variants"][variant] = entry
    return out


def write_seed_files(spec_path, out_dir) -> dict:
    """Read the spec's finished runs and write `per_seed.csv` and `summary.json` into `out_dir`."""
    from trl_mtp.experiments.runner import check_finished
    from trl_mtp.experiments.spec import load_spec

    spec = load_spec(spec_path)
    results, _ = check_finished(spec, spec.grid())
    values = per_seed_values(spec, results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [m.name for m in spec.metrics]
    with open(out_dir / "per_seed.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "seed", *names])
        for variant in spec.variants:
            for seed, row in sorted(values.get(variant, {}).items()):
                writer.writerow([variant, seed, *(row.get(n, "") for n in names)])
    curves = [(run.variant, run.seed, point) for run, result in results.items() for point in result.get("curve") or []]
    if curves:
        fields = sorted({k for _, _, point in curves for k in point} - {"step"})
        with open(out_dir / "curves.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["variant", "seed", "step", *fields])
            for variant, seed, point in sorted(
                curves, key=lambda c: (list(spec.variants).index(c[0]), c[1], c[2]["step"])
            ):
                writer.writerow([variant, seed, point["step"], *(point.get(k, "") for k in fields)])
    summary = summarize_seeds(spec, values)
    summary["command"] = f"python -m trl_mtp.experiments.seed_summary {spec_path} {out_dir}"
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m trl_mtp.experiments.seed_summary SPEC.yaml OUT_DIR")
    write_seed_files(sys.argv[1], sys.argv[2])
