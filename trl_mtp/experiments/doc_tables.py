"""The docs' experiment tables, generated from the committed result files and checked against them.

A table in docs/*.md that comes from a spec sits between two markers, each at the start of its line, and is written
from the spec's result folder (docs/results/<name>/, written by `trl-mtp experiment`):

    <!-- results:wm_drift -->                                        the spec's whole table
    <!-- results:wm_drift baseline="WM-PPO" metrics="held-out acc" variants="WM-PPO|WM whitening" -->
    ...generated; do not edit...
    <!-- /results -->

Options: `metrics` and `variants` pick columns and rows (names separated by `|`, in the order given), `baseline`
compares with another variant (its runs pair with the others' by seed and item, as the spec's baseline does).
The numbers are recomputed from `runs.csv` (the per-run values), never copied from `table.json`; `check_results`
also checks that `table.json` holds the same numbers, so the JSON a reader opens is the table.

    python -m trl_mtp.experiments.doc_tables            # rewrite every block in docs/*.md
    python -m trl_mtp.experiments.doc_tables --check    # exit 1 naming each stale block or result folder (CI: the
                                                        # test tests/experiments/test_doc_tables.py does the same)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

from trl_mtp.experiments.spec import RESULTS_ROOT
from trl_mtp.experiments.tables import (
    RUNS_FILE,
    TABLE_FILE,
    caption,
    markdown_table,
    read_runs_csv,
    spec_of_table,
    summarize,
)

# a marker starts its line: an indented one (an example in a code block) is left alone
BLOCK = re.compile(
    r"^<!-- results:(?P<name>[\w.-]+)(?P<options>[^>]*?)-->\n(?P<body>.*?)^<!-- /results -->", re.S | re.M
)
OPTION = re.compile(r'\s*(\w+)="([^"]*)"')
OPTIONS = ("metrics", "variants", "baseline")


def load(folder: Path):
    """(spec layout, per-run values, table.json) of a result folder."""
    if not (folder / TABLE_FILE).is_file() or not (folder / RUNS_FILE).is_file():
        raise ValueError(f"{folder}: no {TABLE_FILE} and {RUNS_FILE} (run the spec, or name an existing result folder)")
    table = json.loads((folder / TABLE_FILE).read_text())
    spec = spec_of_table(table)
    return spec, read_runs_csv(spec, folder / RUNS_FILE), table


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return all(
        (x is None and y is None)
        or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12))
        for x, y in zip(a, b)
    )


def check_results(folder: Path) -> list[str]:
    """Where table.json disagrees with the numbers recomputed from runs.csv (empty when it agrees)."""
    spec, values, table = load(folder)
    stored = {(s["task"], s["variant"], s["metric"]): s for s in table["stats"]}
    problems = []
    for stat in summarize(spec, values):
        key = (stat.task, stat.variant, stat.metric.name)
        entry = stored.pop(key, None)
        if (
            entry is None
            or entry["seeds"] != stat.seeds
            or not _close(entry["value"], stat.value)
            or not _close(entry["diff"], stat.diff and list(stat.diff))
        ):
            problems.append(f"{folder / TABLE_FILE}: {' / '.join(k for k in key if k)} differs from {RUNS_FILE}")
    problems += [
        f"{folder / TABLE_FILE}: {' / '.join(k for k in key if k)} has no runs in {RUNS_FILE}" for key in stored
    ]
    return problems


def parse_options(text: str, where: str) -> dict[str, str]:
    options = dict(OPTION.findall(text))
    leftover = OPTION.sub("", text).strip()
    if leftover:
        raise ValueError(f'{where}: cannot read {leftover!r} (options are key="value")')
    for key in options:
        if key not in OPTIONS:
            raise ValueError(f"{where}: unknown option {key!r}; known: {', '.join(OPTIONS)}")
    return options


def _pick(names: list[str], wanted: str | None, what: str, where: str) -> list[str]:
    if wanted is None:
        return names
    picked = wanted.split("|")
    for name in picked:
        if name not in names:
            raise ValueError(f"{where}: {what} {name!r} is not in the table ({', '.join(map(repr, names))})")
    return picked


def render(name: str, options: dict[str, str], results_root: Path = RESULTS_ROOT, where: str = "") -> str:
    """The markdown of one block: the table, then its seeds and intervals, then where its numbers come from."""
    folder = results_root / name
    spec, values, table = load(folder)
    metrics = _pick([m.name for m in spec.metrics], options.get("metrics"), "metric", where)
    variants = _pick(list(spec.variants), options.get("variants"), "variant", where)
    baseline = options.get("baseline", spec.baseline)
    if baseline is not None and baseline not in spec.variants:
        raise ValueError(f"{where}: baseline {baseline!r} is not a variant of {name}")
    spec = dataclasses.replace(
        spec, baseline=baseline, metrics=[m for n in metrics for m in spec.metrics if m.name == n]
    )
    stats = [s for s in summarize(spec, values) if s.variant in variants]
    stats.sort(key=lambda s: variants.index(s.variant))
    if not stats:
        raise ValueError(f"{where}: no finished runs in {folder} for these rows")
    commit = f" at commit {table['commit']}" if table.get("commit") else ""
    source = f"Per-run values: `{folder / RUNS_FILE}`, made by `{table['command']}`{commit}."
    return f"\n{markdown_table(spec, stats)}\n\n{caption(stats)} {source}\n\n"


def sync(paths, results_root: Path = RESULTS_ROOT, write: bool = False) -> tuple[list[str], list[str]]:
    """(the stale blocks of the markdown files `paths`, rewritten when `write`; the result folders whose table.json
    disagrees with their runs.csv)."""
    stale, used = [], set()
    for path in map(Path, paths):
        text = path.read_text()

        def fill(match, path=path):
            where = f"{path}: results:{match['name']}"
            used.add(match["name"])
            body = render(match["name"], parse_options(match["options"], where), results_root, where)
            if body != match["body"]:
                stale.append(f"{where} is not what its result files give")
            return match[0][: match.start("body") - match.start()] + body + "<!-- /results -->"

        new = BLOCK.sub(fill, text)
        if write and new != text:
            path.write_text(new)
    return stale, [p for name in sorted(used) for p in check_results(results_root / name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    parser.add_argument("--docs", default="docs", help="the folder of the markdown files (default: docs)")
    parser.add_argument("--results", default=str(RESULTS_ROOT), help="the root of the result folders")
    args = parser.parse_args(argv)
    try:
        stale, broken = sync(sorted(Path(args.docs).glob("*.md")), Path(args.results), write=not args.check)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in (stale if args.check else []) + broken:
        print(problem, file=sys.stderr)
    if not args.check:
        print(f"{len(stale)} block(s) rewritten")
    return 1 if broken or (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
