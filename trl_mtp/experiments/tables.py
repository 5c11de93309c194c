"""From finished runs to numbers: means with 90% bootstrap CIs and paired differences to the baseline, written as
markdown, CSV and one plot per metric.

Per-item metrics (a list per run, e.g. exact match per eval item): the CI resamples seeds, then items within each
seed (Gloeckle et al. 2024); one seed gives the item-level CI. The difference to the baseline pairs the same seeds
and items: "diff" pools the pairs and resamples items (item difficulty cancels, but the seed-to-seed spread is not
in it), "seeds resampled" resamples seeds then items of the per-item differences (the honest one across seeds).
Per-run scalars (e.g. the training reward): the CI resamples seeds; the difference pairs runs of the same seed. With
one seed a scalar has no CI and only its value is shown.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trl_mtp.experiments.bootstrap import bootstrap_ci, bootstrap_ci_seeds, bootstrap_diff_ci
from trl_mtp.experiments.spec import Metric, Run, Spec

Interval = tuple  # (mean, low, high); low and high are None where there is no interval


@dataclass
class Stat:
    """One metric of one table row (task, variant)."""

    metric: Metric
    task: str | None
    variant: str
    seeds: list[int]
    value: Interval
    diff: Interval | None = None  # vs the baseline; None for the baseline itself or without one
    diff_seeds: Interval | None = None  # per-item metrics only, with two or more paired seeds


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
        raise ValueError(f"metric {metric.name!r}: {metric.path} of {run.run_dir} is not a number "
                         f"(a per-item list wants 'items:')")
    return float(value)


def check_metric_paths(spec: Spec, results: dict[Run, dict]):
    """A metric that no finished run has is a typo in its path: say so before the grid runs, not after. Checked only
    once every variant has a finished run: a metric of some variants only (a world model's) may be absent so far."""
    if not results or {run.variant for run in results} != set(spec.variants):
        return
    for metric in spec.metrics:
        if all(metric_values(metric, run, result) is None for run, result in results.items()):
            raise ValueError(f"metric {metric.name!r}: no finished run has {metric.path!r} "
                             f"(e.g. {next(iter(results)).run_dir / 'result.json'})")


def _scalar_interval(values) -> Interval:
    values = list(values)
    if len(values) < 2:  # one seed: nothing to resample
        return (float(np.mean(values)), None, None)
    return bootstrap_ci(values)


def _stat(spec: Spec, metric: Metric, task, variant, by_seed: dict, base_by_seed: dict) -> Stat:
    seeds = list(by_seed)
    items = metric.kind == "items"
    if not metric.ci:
        value = (float(np.mean([v.mean() if items else v for v in by_seed.values()])), None, None)
    else:
        value = bootstrap_ci_seeds(list(by_seed.values())) if items else _scalar_interval(by_seed.values())
    stat = Stat(metric, task, variant, seeds, value)
    paired = [s for s in seeds if s in base_by_seed]
    if not (metric.compare and spec.baseline and variant != spec.baseline and paired):
        return stat
    if not items:
        stat.diff = _scalar_interval(by_seed[s] - base_by_seed[s] for s in paired)
        return stat
    for s in paired:
        if by_seed[s].size != base_by_seed[s].size:
            raise ValueError(f"metric {metric.name!r}: {variant} seed {s} has {by_seed[s].size} items and "
                             f"{spec.baseline} {base_by_seed[s].size}; a paired comparison needs the same items")
    stat.diff = bootstrap_diff_ci(np.concatenate([by_seed[s] for s in paired]),
                                  np.concatenate([base_by_seed[s] for s in paired]))
    if len(paired) > 1:
        stat.diff_seeds = bootstrap_ci_seeds([by_seed[s] - base_by_seed[s] for s in paired])
    return stat


def summarize(spec: Spec, results: dict[Run, dict]) -> list[Stat]:
    """One Stat per (row, metric), rows in spec order; rows without any finished run are left out."""
    values: dict[tuple, dict[int, object]] = {}
    def seed_order(run):  # spec order; seeds given on the command line only (--seeds) after those
        return (run.seed not in spec.seeds, spec.seeds.index(run.seed) if run.seed in spec.seeds else run.seed)

    for run in sorted(results, key=seed_order):
        for metric in spec.metrics:
            value = metric_values(metric, run, results[run])
            if value is not None:
                values.setdefault((metric.name, run.task, run.variant), {})[run.seed] = value
    stats = []
    for task, variant in dict.fromkeys((r.task, r.variant) for r in sorted(results, key=_row_order(spec))):
        for metric in spec.metrics:
            by_seed = values.get((metric.name, task, variant))
            if by_seed:
                base = values.get((metric.name, task, spec.baseline), {})
                stats.append(_stat(spec, metric, task, variant, by_seed, base))
    return stats


def _row_order(spec: Spec):
    rows = spec.rows()
    return lambda run: rows.index((run.task, run.variant))


def _fmt(value, fmt: str, sign: bool = False) -> str:
    return "" if value is None else format(value, ("+" if sign else "") + fmt)


def _cell(interval: Interval | None, fmt: str, sign: bool = False) -> str:
    if interval is None:
        return ""
    mean, low, high = interval
    ci = f" [{_fmt(low, fmt, sign)}, {_fmt(high, fmt, sign)}]" if low is not None else ""
    return _fmt(mean, fmt, sign) + ci


def _columns(spec: Spec, several_seeds: bool) -> list[tuple[str, Metric, str]]:
    """(header, metric, which) for every numeric column: which is value, diff or diff_seeds."""
    columns = []
    for m in spec.metrics:
        columns.append((m.name + (" [90% CI]" if m.ci else ""), m, "value"))
        if m.compare and spec.baseline:
            columns.append((f"diff vs {spec.baseline} [90% CI]", m, "diff"))
            if m.kind == "items" and several_seeds:
                columns.append((f"diff vs {spec.baseline}, seeds resampled [90% CI]", m, "diff_seeds"))
    return columns


def markdown_table(spec: Spec, stats: list[Stat]) -> str:
    several_seeds = any(len(s.seeds) > 1 for s in stats)
    columns = _columns(spec, several_seeds)
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


def write_csv(stats: list[Stat], path: Path):
    """Long format, full precision: one line per (task, variant, metric)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "variant", "metric", "kind", "seeds", "mean", "ci_low", "ci_high", "diff", "diff_low",
                         "diff_high", "diff_seeds_low", "diff_seeds_high"])
        for s in stats:
            diff = s.diff or (None, None, None)
            diff_seeds = s.diff_seeds or (None, None, None)
            writer.writerow([s.task or "", s.variant, s.metric.name, s.metric.kind, " ".join(map(str, s.seeds)),
                             *s.value, *diff, *diff_seeds[1:]])


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
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 0.5 * len(stats) + 2) * len(panels), 3.8),
                             squeeze=False)
    x = np.arange(len(stats))
    for ax, (which, title) in zip(axes[0], panels):
        intervals = [getattr(s, which) or (np.nan, None, None) for s in stats]
        means = np.array([i[0] for i in intervals], dtype=float)
        err = np.array([[m - i[1] if i[1] is not None else 0 for m, i in zip(means, intervals)],
                        [i[2] - m if i[2] is not None else 0 for m, i in zip(means, intervals)]])
        colors = ["0.55" if s.variant == spec.baseline else plt.get_cmap("viridis")(0.35) for s in stats]
        ax.bar(x, means, color=colors, yerr=err if metric.ci else None, capsize=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title + (" (90% CI)" if metric.ci else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)  # small files, as the report's figures: the docs commit some of them
    plt.close(fig)
    return True


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "metric"


def write_outputs(spec: Spec, results: dict[Run, dict], folder: Path, *, total_runs: int, command: str) -> str:
    """table.md, table.csv and `<metric>.png` in `folder`; returns the markdown table."""
    stats = summarize(spec, results)
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown_table(spec, stats)
    seeds = sorted({r.seed for r in results})
    notes = [f"Finished runs: {len(results)} of {total_runs} (seeds {', '.join(map(str, seeds)) or 'none'}); "
             f"reproduce: `{command}`.",
             "90% bootstrap CIs: per-item metrics resample seeds, then items within each seed; per-run metrics "
             "resample seeds. Diff: paired with the baseline on the same seeds (and items), items resampled; "
             "seeds resampled: seeds, then items of the per-item differences."]
    text = "\n\n".join(x for x in [f"# {spec.name}", spec.description.strip(), table, "\n".join(notes)] if x)
    (folder / "table.md").write_text(text + "\n")
    write_csv(stats, folder / "table.csv")
    for metric in spec.metrics:
        plot_metric(spec, metric, stats, folder / f"{slug(metric.name)}.png")
    return table
