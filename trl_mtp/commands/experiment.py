"""`trl-mtp experiment SPEC.yaml`: run a grid of variants x seeds (x tasks) from a spec, resuming finished runs, and
write its result files (per-run CSV, the table's numbers as JSON and markdown: means with 90% intervals over seeds,
paired differences to the baseline; by default into docs/results/<name>) and one plot per metric (next to the runs).

Exit codes: 0 all runs finished; 1 some runs failed (the others ran, the table covers what finished); 2 bad input.
The spec format: docs/experiments.md.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from trl_mtp.commands.common import ArgumentParser


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="trl-mtp experiment",
        description="Run an experiment grid from a YAML spec and "
        "write its table (markdown, CSV, plots) into the results folder.",
    )
    parser.add_argument("spec", help="the experiment spec (YAML), e.g. experiments/sft_compare.yaml")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the grid, what is finished and the estimated time; run nothing"
    )
    parser.add_argument("--table-only", action="store_true", help="write the table from the finished runs; run nothing")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="these variants (and the baseline) only")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="these seeds instead of the spec's")
    parser.add_argument("--out", help="run folders here instead of the spec's `out`")
    parser.add_argument(
        "--results",
        help="the result files (runs.csv, table.json, table.md) here instead of the "
        "spec's `results` (default docs/results/<name>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from trl_mtp.experiments.runner import check_finished, code_version, dry_run, run_grid
    from trl_mtp.experiments.spec import load_spec
    from trl_mtp.experiments.tables import check_metric_paths, write_outputs

    spec = load_spec(args.spec)
    if args.out:
        spec.out = Path(args.out)
    only = None
    if args.only:
        unknown = [v for v in args.only if v not in spec.variants]
        if unknown:
            raise ValueError(
                f"--only: {unknown[0]!r} is not a variant of {args.spec} ({', '.join(map(repr, spec.variants))})"
            )
        only = set(args.only) | ({spec.baseline} if spec.baseline else set())  # diffs need the baseline's runs
    runs = spec.grid(only, args.seeds)
    if args.dry_run:
        print(dry_run(spec, runs))
        return 0
    finished, notes = check_finished(spec, runs)
    check_metric_paths(spec, finished)
    for note in notes:
        print(note, file=sys.stderr)
    if args.table_only:
        results, failed = finished, {}
    else:
        outcome = run_grid(spec, runs, finished, progress=not args.no_progress)
        results, failed = outcome.results, outcome.failed
    results_dir = Path(args.results) if args.results else spec.results_dir
    command = "trl-mtp experiment " + shlex.join(argv)
    failures = spec.out / "failures.txt"
    if failed:
        spec.out.mkdir(parents=True, exist_ok=True)
        failures.write_text("".join(f"{run.label}: {error} ({run.run_dir})\n" for run, error in failed.items()))
    elif not args.table_only:
        failures.unlink(missing_ok=True)  # this pass ran everything it was asked: older failures are gone
    if results:
        print(
            write_outputs(
                spec, results, results_dir, plots=spec.out, total_runs=len(runs), command=command, commit=code_version()
            )
        )
        print(f"results: {results_dir} (table.md, table.json, runs.csv); plots in {spec.out}")
    else:
        print("no finished runs yet: no table", file=sys.stderr)
    if failed:
        print(
            f"trl-mtp experiment: {len(failed)} run(s) failed: {'; '.join(r.label for r in failed)} (see {failures})",
            file=sys.stderr,
        )
        return 1
    return 0
