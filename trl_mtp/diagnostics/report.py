"""`write_report(run_dirs, out_dir, names)`: PNG plots and HTML pages from run folders (`trl-mtp report`).

Layout: `out_dir/index.html` (comparison across runs: held-out results side by side, curves, links to each run) and
`out_dir/<run>/index.html` with that run's PNGs beside it. Runs are named by what they are ("MTP-SFT sequential
D=2"), or by their folder when no name is given. Pages are self-contained in the sense that matters offline: inline CSS, no scripts, no
network; they reference only the PNG files written next to them (tests check that every reference exists).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from trl_mtp.bootstrap import bootstrap_ci
from trl_mtp.diagnostics.plots import COMPARE_PLOTS, RUN_PLOTS
from trl_mtp.diagnostics.run_data import RunData, load_run

STYLE = """body{font-family:sans-serif;max-width:1250px;margin:1em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:1.2em 0}figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 5px}
td.ok{background:#d8f5d0}td.miss{background:#fbe0dc}code{background:#f3f3f3}"""


def page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def figure(file: str, caption: str) -> str:
    return (
        f"<figure><img src='{html.escape(file)}' alt='{html.escape(file)}'><figcaption>{html.escape(caption)}"
        f"</figcaption></figure>"
    )


def summary_table(run: RunData) -> str:
    rows = [
        ("run folder", str(run.path)),
        ("head type", run.meta.get("head_type", "none (next-token)")),
        ("depths D", run.num_depths),
        ("records", len(run.records)),
        ("logged steps", len(run.log_history)),
    ]
    if run.summary:
        rows.append(
            (
                "recorder overhead",
                f"{run.summary['recording_seconds']:.1f}s for {run.summary['records']} "
                f"records = {100 * run.summary['overhead_fraction']:.1f}% of the rest of training "
                f"(every {run.summary['every']} steps)",
            )
        )
    if run.consistency:
        s = run.consistency["settings"]
        rows.append(
            ("consistency probe", f"{s['contexts']} contexts x {s['n_samples']} rollouts, T={s['temperature']}")
        )
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def predictions_table(run: RunData, prefix: str, title: str, max_positions: int = 40) -> str:
    """Row 0 of the latest snapshot: at each position, the actual token each depth should predict and its top-3
    (green: top-1 is right)."""
    snap = run.snapshot
    if not snap or f"{prefix}_targets" not in snap:
        return ""
    targets, ids, probs = (
        snap[f"{prefix}_targets"][:, 0],
        snap[f"{prefix}_topk_ids"][:, 0],
        snap[f"{prefix}_topk_probs"][:, 0].astype(np.float32),
    )
    positions = [t for t in range(targets.shape[1]) if (targets[:, t] != -100).any()][:max_positions]
    if not positions:
        return ""
    depths = range(targets.shape[0])
    head = "<tr><th>t</th>" + "".join(f"<th>depth {d}: actual</th><th>top-3 (p)</th>" for d in depths) + "</tr>"
    body = []
    for t in positions:
        cells = [f"<td>{t}</td>"]
        for d in depths:
            y = int(targets[d, t])
            if y == -100:
                cells.append("<td></td><td></td>")
                continue
            top = ", ".join(
                f"{html.escape(run.token(int(i)))} ({p:.2f})" for i, p in zip(ids[d, t, :3], probs[d, t, :3])
            )
            cls = "ok" if int(ids[d, t, 0]) == y else "miss"
            cells.append(f"<td>{html.escape(run.token(y))}</td><td class='{cls}'>{top}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h2>{html.escape(title)} (step {run.snapshot_step})</h2><table>{head}{''.join(body)}</table>"


def run_page(run: RunData, out_dir: Path) -> list[str]:
    """Write one run's PNGs and index.html into `out_dir`; returns the PNG file names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, parts = [], [summary_table(run), results_table([run])]
    for name, plot in RUN_PLOTS.items():
        file = f"{name}.png"
        if plot(run, out_dir / file):
            written.append(file)
            parts.append(f"<h2>{name.replace('_', ' ')}</h2>" + figure(file, plot.__doc__.strip()))
    parts.append(predictions_table(run, "probe", "probe batch: predicted vs actual tokens by depth"))
    parts.append(predictions_table(run, "rollout", "sampled rollout: what each head predicted for the sampled tokens"))
    (out_dir / "index.html").write_text(page(f"trl-mtp report: {run.name}", "\n".join(parts)))
    return written


# held-out results of a run's result.json, one column each: (column, path in the result, per-item list for a CI)
RESULT_COLUMNS = [
    ("RL task accuracy", "accuracy", "correct"),
    ("accuracy before RL", "accuracy_before", None),
    ("accepted length before RL", "accept_before", None),
    ("accepted length after RL", "accept_after", None),
    ("final train loss", "final_train_loss", None),
    ("next-token acc (train)", "final_token_accuracy", None),
    ("train seconds", "train_seconds", None),
]


def result_cells(result: dict) -> dict[str, str]:
    """Column -> formatted value of one run's result.json: each task's held-out accuracy (90% bootstrap CI over
    items), then the RL and training figures it has."""

    def cell(value, items):
        ci = bootstrap_ci(items)[1:] if items else None
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    cells = {
        f"{task} accuracy": cell(score["accuracy"], score.get("correct"))
        for task, score in (result.get("tasks") or {}).items()
        if "accuracy" in score
    }
    cells.update(
        {
            f"{task} NLL/token": f"{score['nll']:.3f}"
            for task, score in (result.get("tasks") or {}).items()
            if "nll" in score
        }
    )
    for column, key, items in RESULT_COLUMNS:
        if isinstance(result.get(key), (int, float)):
            cells[column] = f"{result[key]:.0f}" if key == "train_seconds" else cell(result[key], result.get(items))
    return cells


def results_table(runs: list[RunData]) -> str:
    """The held-out results of the runs side by side (those with a result.json), one row per run."""
    rows = {run.name: result_cells(run.result) for run in runs if run.result}
    if not rows:
        return ""
    found = {c for cells in rows.values() for c in cells}
    fixed = [c for c, _, _ in RESULT_COLUMNS]
    columns = sorted(found - set(fixed)) + [c for c in fixed if c in found]  # the tasks, then the fixed columns
    head = "<tr><th>run</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join(
        "<tr><th>"
        + html.escape(name)
        + "</th>"
        + "".join(f"<td>{html.escape(cells.get(c, ''))}</td>" for c in columns)
        + "</tr>"
        for name, cells in rows.items()
    )
    return (
        f"<h2>held-out results</h2><table>{head}{body}</table><p>Accuracy: greedy exact match on held-out "
        "items, [90% bootstrap CI over items]. Accepted length: tokens per base forward of greedy "
        "self-speculative decoding with the run's heads.</p>"
    )


def page_folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("_") or "run"


def unique_names(paths: list[Path], names: list[str] | None = None) -> list[str]:
    """The runs' names (`names`, else their folder names), made unique, and so are the page folders named after
    them."""
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} runs: give one name per run")
    unique, seen = [], {}
    for name in names or [p.resolve().name for p in paths]:
        folder = page_folder(name)
        seen[folder] = seen.get(folder, 0) + 1
        unique.append(name if seen[folder] == 1 else f"{name}-{seen[folder]}")
    return unique


def write_report(run_dirs: list, out_dir, names: list[str] | None = None) -> Path:
    """Report of `run_dirs` (named `names`, default their folder names) into `out_dir`; returns the path of the
    comparison page `out_dir/index.html`."""
    out_dir = Path(out_dir)
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, name) for p, name in zip(paths, unique_names(paths, names))]
    out_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for run in runs:
        folder = page_folder(run.name)
        written = run_page(run, out_dir / folder)
        links.append(
            f"<li><a href='{html.escape(folder)}/index.html'>{html.escape(run.name)}</a> "
            f"({len(written)} plots; {html.escape(str(run.path))})</li>"
        )
    parts = ["<h2>runs</h2><ul>" + "".join(links) + "</ul>", results_table(runs)]
    parts += [
        predictions_table(run, "rollout", f"{run.name}: sampled tokens vs what each head predicted") for run in runs
    ]
    for name, plot in COMPARE_PLOTS.items():
        if plot(runs, out_dir / f"{name}.png"):
            parts.append(f"<h2>{name.replace('_', ' ')}</h2>" + figure(f"{name}.png", plot.__doc__.strip()))
    index = out_dir / "index.html"
    index.write_text(page("trl-mtp report: comparison", "\n".join(parts)))
    return index
