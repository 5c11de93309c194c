"""From finished runs to numbers: means with 90% intervals over seeds and paired differences to the baseline, written
as the spec's result files (committed with the docs) and one plot per metric.

Intervals (`trl_mtp/experiments/intervals.py`, coverage simulated at 3, 5 and 10 seeds in
tests/experiments/test_interval_coverage.py): a per-run scalar (e.g. the training reward) gets a Student t over its
per-seed values, its difference to the baseline a t over the per-seed differences (runs of the same seed paired).
A per-item metric (a list per run, e.g. exact match per eval item, the same items in every seed) gets the two-way
seeds x items interval: the spread of the seed means plus that of the shared items; its difference to the baseline
is the same interval over the per-item differences (same seeds, same items). With one seed a scalar has no interval
and a per-item metric only the items' (seed-to-seed spread unknown): the table says so.

Result files, per spec (`results`, default docs/results/<name>): `runs.csv`, one row per finished run with each
metric's value (per-item metrics: the mean, and the item values in a column of their own), `table.json`, the
table's numbers and how they were made, and `table.md`. `trl_mtp/experiments/doc_tables.py` regenerates the docs'
tables from these files and checks them.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trl_mtp.experiments.intervals import METHOD, seeds_items_interval, t_interval
from trl_mtp.experiments.spec import Metric, Run, Spec

CONFIDENCE = 0.9
RUNS_FILE, TABLE_FILE, TABLE_MD = "runs.csv", "table.json", "table.md"
Interval = tuple  # (mean, low, high); low and high are None where there is no interval


@dataclass
class Stat:
    """One metric of one table row (task, variant)."""

    metric: Metric
    task: str | None
    variant: str
    seeds: list[int]
    value: Interval
    diff: Interval | None = None  # vs the baseline, paired by seed (and item); None for the baseline or without one


def lookup(result: dict, keys: list[str]):
    """result["a"]["b"]... for keys ["a", "b", ...] (a digit key indexes a list: "by_position.1"), or None where a key
    is missing."""
    for key in keys:
        if isinstance(result, list) and key.isdigit() and int(key) < len(result):
            result = result[int(key)]
        elif isinstance(result, dict) and key in result:
            result = result[key]
        else:
            return None
    return result


def metric_values(metric: Metric, run: Run, result: dict):
    """The run's value of `metric`: a float array (items) or a float (scalar); None when the result has none."""
    value = lookup(result, metric.path_for(run.task))
    if value is None or (metric.kind == "items" and isinstance(value, list) and not value):
        return None
    if metric.kind == "items":
        if not isinstance(value, list):
            raise ValueError(f"metric {metric.name!r}: {metric.path} of {run.run_dir} is not a per-item list")
        return np.asarray(value, dtype=float)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(
            f"metric {metric.name!r}: {metric.path} of {run.run_dir} is not a number (a per-item list wants 'items:')"
        )
    return float(value)


def check_metric_paths(spec: Spec, results: dict[Run, dict]):
    """A metric that no finished run has is a typo in its path: say so before the grid runs, not after. Checked only
    once every variant has a finished run: a metric of some variants only (a world model's) may be absent so far."""
    if not results or {run.variant for run in results} != set(spec.variants):
        return
    for metric in spec.metrics:
        if all(metric_values(metric, run, result) is None for run, result in results.items()):
            raise ValueError(
                f"metric {metric.name!r}: no finished run has {metric.path!r} "
                f"(e.g. {next(iter(results)).run_dir / 'result.json'})"
            )


def _interval(metric: Metric, by_seed: list) -> Interval:
    """The interval of one row's per-seed values (arrays of items, or floats)."""
    if metric.kind == "items":
        return seeds_items_interval(by_seed, confidence=CONFIDENCE)
    return t_interval(by_seed, confidence=CONFIDENCE)


def _stat(spec: Spec, metric: Metric, task, variant, by_seed: dict, base_by_seed: dict) -> Stat:
    seeds = list(by_seed)
    items = metric.kind == "items"
    if metric.ci:
        value = _interval(metric, list(by_seed.values()))
    else:
        value = (float(np.mean([v.mean() if items else v for v in by_seed.values()])), None, None)
    stat = Stat(metric, task, variant, seeds, value)
    paired = [s for s in seeds if s in base_by_seed]
    if not (metric.compare and spec.baseline and variant != spec.baseline and paired):
        return stat
    if items:
        for s in paired:
            if by_seed[s].size != base_by_seed[s].size:
                raise ValueError(
                    f"metric {metric.name!r}: {variant} seed {s} has {by_seed[s].size} items and "
                    f"{spec.baseline} {base_by_seed[s].size}; a paired comparison needs the same items"
                )
    stat.diff = _interval(metric, [by_seed[s] - base_by_seed[s] for s in paired])
    return stat


Values = dict  # (metric name, task, variant) -> {seed: float array (items) or float (scalar)}, seeds in spec order


def collect(spec: Spec, results: dict[Run, dict]) -> Values:
    """Every finished run's metric values, read from its result."""
    values: Values = {}

    def seed_order(run):  # spec order; seeds given on the command line only (--seeds) after those
        return (run.seed not in spec.seeds, spec.seeds.index(run.seed) if run.seed in spec.seeds else run.seed)

    for run in sorted(results, key=seed_order):
        for metric in spec.metrics:
            value = metric_values(metric, run, results[run])
            if value is not None:
                values.setdefault((metric.name, run.task, run.variant), {})[run.seed] = value
    return values


def summarize(spec: Spec, values: Values) -> list[Stat]:
    """One Stat per (row, metric) of `values`, rows in spec order; rows without any value are left out."""
    stats = []
    for task, variant in spec.rows():
        for metric in spec.metrics:
            by_seed = values.get((metric.name, task, variant))
            if by_seed:
                base = values.get((metric.name, task, spec.baseline), {})
                stats.append(_stat(spec, metric, task, variant, by_seed, base))
    return stats


def _fmt(value, fmt: str, sign: bool = False) -> str:
    return "" if value is None else format(value, ("+" if sign else "") + fmt)


def _cell(interval: Interval | None, fmt: str, sign: bool = False) -> str:
    if interval is None:
        return ""
    mean, low, high = interval
    ci = f" [{_fmt(low, fmt, sign)}, {_fmt(high, fmt, sign)}]" if low is not None else ""
    return _fmt(mean, fmt, sign) + ci


def _columns(spec: Spec) -> list[tuple[str, Metric, str]]:
    """(header, metric, which) for every numeric column: which is value or diff."""
    columns = []
    for m in spec.metrics:
        columns.append((m.name + (" [90% CI]" if m.ci else ""), m, "value"))
        if m.compare and spec.baseline:
            columns.append((f"diff vs {spec.baseline} [90% CI]", m, "diff"))
    return columns


def markdown_table(spec: Spec, stats: list[Stat]) -> str:
    columns = _columns(spec)
    rows = list(dict.fromkeys((s.task, s.variant) for s in stats))
    by_key = {(s.task, s.variant, s.metric.name): s for s in stats}
    head = (["task"] if spec.tasks else []) + ["variant", "seeds"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for task, variant in rows:
        seeds = max((len(s.seeds) for s in stats if (s.task, s.variant) == (task, variant)), default=0)
        cells = ([task] if spec.tasks else []) + [variant, str(seeds)]
        for _, metric, which in columns:
            stat = by_key.get((task, variant, metric.name))
            cells.append(_cell(getattr(stat, which), metric.format, sign=which != "value") if stat else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_list(seeds: list[int]) -> str:
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def caption(stats: list[Stat]) -> str:
    """What a table rests on: its seeds and how its intervals were made (only the kinds it shows)."""
    counts = sorted({len(s.seeds) for s in stats})
    seeds = sorted({seed for s in stats for seed in s.seeds})
    text = (
        f"{counts[0]} seed{'s' if counts[0] > 1 else ''} per row"
        if len(counts) == 1
        else f"{counts[0]}-{counts[-1]} seeds per row"
    ) + f" (seeds {_seed_list(seeds)}). 90% intervals: "
    kinds = {s.metric.kind for s in stats if s.metric.ci or s.diff}
    methods = []
    if "scalar" in kinds:
        methods.append(
            "per-run metrics, Student t over the seeds' values (differences: over the per-seed paired differences)"
        )
    if "items" in kinds:
        methods.append(
            "per-item metrics, t over the seed means widened by the spread of the items all seeds share "
            "(differences: the same over the per-item paired differences)"
        )
    if counts[0] == 1:
        methods.append("with one seed, per-item intervals hold the item spread only and per-run metrics have none")
    return text + "; ".join(methods) + "." if methods else text + "none."


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def write_runs_csv(spec: Spec, values: Values, path: Path):
    """One row per finished run (task, variant, seed): each metric's value; a per-item metric also its item values
    (space-separated, full precision) in the column `<metric> (items)`."""
    runs = [
        (task, variant, seed)
        for task, variant in spec.rows()
        for seed in dict.fromkeys(s for m in spec.metrics for s in values.get((m.name, task, variant), {}))
    ]
    head = (["task"] if spec.tasks else []) + ["variant", "seed"]
    for m in spec.metrics:
        head += [m.name] + ([f"{m.name} (items)"] if m.kind == "items" else [])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(head)
        for task, variant, seed in runs:
            row = ([task] if spec.tasks else []) + [variant, seed]
            for m in spec.metrics:
                value = values.get((m.name, task, variant), {}).get(seed)
                if m.kind == "items":
                    row += ["", ""] if value is None else [_number(value.mean()), " ".join(map(_number, value))]
                else:
                    row.append("" if value is None else _number(value))
            writer.writerow(row)


def read_runs_csv(spec: Spec, path: Path) -> Values:
    """The values `write_runs_csv` wrote."""
    values: Values = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            task = row.get("task") or None
            for m in spec.metrics:
                if m.kind == "items" and row.get(f"{m.name} (items)"):
                    value = np.array(row[f"{m.name} (items)"].split(), dtype=float)
                    if not np.isclose(float(row[m.name]), value.mean(), rtol=1e-12, atol=0):
                        raise ValueError(
                            f"{path}: {row['variant']} seed {row['seed']}: {m.name} is {row[m.name]}, "
                            f"its items' mean {value.mean()!r}"
                        )
                elif m.kind == "scalar" and row.get(m.name):
                    value = float(row[m.name])
                else:
                    continue
                values.setdefault((m.name, task, row["variant"]), {})[int(row["seed"])] = value
    return values


def table_json(spec: Spec, stats: list[Stat], **provenance) -> dict:
    """The table's numbers, the layout needed to recompute them from runs.csv, and how they were made."""
    return {
        "name": spec.name,
        "description": spec.description.strip(),
        **provenance,
        "confidence": CONFIDENCE,
        "method": METHOD,
        "baseline": spec.baseline,
        "variants": list(spec.variants),
        "tasks": list(spec.tasks) if spec.tasks else None,
        "seeds": spec.seeds,
        "metrics": [
            {"name": m.name, "kind": m.kind, "path": m.path, "format": m.format, "ci": m.ci, "compare": m.compare}
            for m in spec.metrics
        ],
        "stats": [
            {
                "task": s.task,
                "variant": s.variant,
                "metric": s.metric.name,
                "seeds": s.seeds,
                "value": list(s.value),
                "diff": list(s.diff) if s.diff else None,
            }
            for s in stats
        ],
    }


def spec_of_table(table: dict) -> Spec:
    """The parts of a spec a table needs (name, variants, tasks, baseline, metrics), from its table.json."""
    return Spec(
        name=table["name"],
        run="",
        out=Path("."),
        seeds=table["seeds"],
        variants={v: {} for v in table["variants"]},
        description=table["description"],
        tasks={t: {} for t in table["tasks"]} if table["tasks"] else None,
        baseline=table["baseline"],
        metrics=[Metric(**m) for m in table["metrics"]],
    )


def plot_metric(spec: Spec, metric: Metric, stats: list[Stat], path: Path) -> bool:
    """Bars with 90% CI whiskers per row; next to it the difference to the baseline, when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [s for s in stats if s.metric.name == metric.name]
    if not stats:
        return False
    labels = [f"{s.task} / {s.variant}" if s.task else s.variant for s in stats]
    panels = [("value", metric.name)]
    if any(s.diff for s in stats):
        panels.append(("diff", f"{metric.name}: difference to {spec.baseline}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 0.5 * len(stats) + 2) * len(panels), 3.8), squeeze=False)
    x = np.arange(len(stats))
    for ax, (which, title) in zip(axes[0], panels):
        intervals = [getattr(s, which) or (np.nan, None, None) for s in stats]
        means = np.array([i[0] for i in intervals], dtype=float)
        err = np.array(
            [
                [m - i[1] if i[1] is not None else 0 for m, i in zip(means, intervals)],
                [i[2] - m if i[2] is not None else 0 for m, i in zip(means, intervals)],
            ]
        )
        colors = ["0.55" if s.variant == spec.baseline else plt.get_cmap("viridis")(0.35) for s in stats]
        ax.bar(x, means, color=colors, yerr=err if metric.ci else None, capsize=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title + (" (90% CI)" if metric.ci else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "metric"


def write_outputs(
    spec: Spec,
    results: dict[Run, dict],
    folder: Path,
    *,
    plots: Path,
    total_runs: int,
    command: str,
    commit: str | None = None,
) -> str:
    """The result files (runs.csv, table.json, table.md) in `folder` and `<metric>.png` in `plots`; returns the
    markdown table with its caption. `commit`: the code's version, recorded with the numbers."""
    values = collect(spec, results)
    stats = summarize(spec, values)
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown_table(spec, stats) + "\n\n" + caption(stats)
    provenance = {"command": command, "commit": commit, "finished_runs": len(results), "total_runs": total_runs}
    write_runs_csv(spec, values, folder / RUNS_FILE)
    (folder / TABLE_FILE).write_text(json.dumps(table_json(spec, stats, **provenance), indent=1) + "\n")
    notes = f"Finished runs: {len(results)} of {total_runs}; reproduce: `{command}`" + (
        f" (code at commit {commit})." if commit else "."
    )
    text = "\n\n".join(x for x in [f"# {spec.name}", spec.description.strip(), table, notes] if x)
    (folder / TABLE_MD).write_text(text + "\n")
    plots.mkdir(parents=True, exist_ok=True)
    for metric in spec.metrics:
        plot_metric(spec, metric, stats, plots / f"{slug(metric.name)}.png")
    return table
