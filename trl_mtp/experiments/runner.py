"""Run a spec's grid: resume (a run folder with `result.json` is finished and skipped), a progress bar, one failure
never stops the others, and a guard against mixing results made with other arguments.

Each run folder gets `run_args.json` (the run function, the base and every keyword argument) before it starts; a
finished run whose stored arguments differ from the spec's is refused, because its numbers would silently join a
table they do not belong to. Older runs have no `run_args.json`: the arguments their `result.json` echoes (the
variant's fields, scalar arguments such as seed and steps) are checked instead, and a note says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from trl_mtp.experiments.spec import Run, Spec

ARGS_FILE = "run_args.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"


def _plain(obj):
    """JSON round trip, so that tuples and lists (or int keys and str keys) compare as they will once stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def run_args(spec: Spec, run: Run) -> dict:
    return _plain({"run": spec.run, "base": spec.base, "kwargs": run.kwargs})


def read_result(run: Run) -> dict | None:
    """The stored result of a finished run, or None when the run has not finished."""
    path = run.run_dir / RESULT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable result ({err}); move the folder away to run it again") from None


def check_finished(spec: Spec, runs: list[Run]) -> tuple[dict[Run, dict], list[str]]:
    """The results of the finished runs, after checking that they were made with the spec's arguments.

    Returns (results, notes); raises ValueError naming the first run whose arguments differ."""
    results, unchecked = {}, []
    for run in runs:
        result = read_result(run)
        if result is None:
            continue
        expected = run_args(spec, run)
        stored_file = run.run_dir / ARGS_FILE
        if stored_file.exists():
            stored = json.loads(stored_file.read_text())
            diff = [k for k in ("run", "base") if stored.get(k) != expected[k]]
            kw, exp = stored.get("kwargs", {}), expected["kwargs"]
            diff += sorted(k for k in set(kw) | set(exp) if kw.get(k, "<absent>") != exp.get(k, "<absent>"))
        else:
            # an older run: compare the arguments its result echoes, i.e. the variant's fields (e.g. mtp, variant)
            # and scalar arguments (seed, steps); a dict argument may share its name with an output (`tasks`)
            diff = [
                k
                for k, v in expected["kwargs"].items()
                if k in result
                and _plain(result[k]) != v
                and (k in _variant_keys(spec, run) or not isinstance(v, (dict, list)))
            ]
            unchecked.append(run)
        if diff:
            raise ValueError(
                f"{run.run_dir} was made with other arguments than the spec's ({', '.join(diff)}); "
                "restore the spec, or move that folder away to run it again"
            )
        results[run] = result
    notes = []
    if unchecked:
        notes.append(
            f"note: {len(unchecked)} finished run(s) predate {ARGS_FILE} (e.g. {unchecked[0].run_dir}); "
            "only the arguments their result records were checked"
        )
    return results, notes


def _variant_keys(spec: Spec, run: Run) -> set[str]:
    return {spec.variant_key} if spec.variant_key else set(spec.variants[run.variant])


@dataclass
class GridOutcome:
    results: dict[Run, dict] = field(default_factory=dict)
    ran: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    failed: dict[Run, str] = field(default_factory=dict)  # run -> one-line error


def run_grid(spec: Spec, runs: list[Run], finished: dict[Run, dict], *, progress: bool = True) -> GridOutcome:
    """Run every run of `runs` that is not in `finished` (from `check_finished`), in order. A run that raises is
    recorded (`error.txt` in its folder) and the grid goes on."""
    from tqdm.auto import tqdm

    results = dict(finished)
    outcome = GridOutcome(results=results, skipped=[r for r in runs if r in results])
    todo = [r for r in runs if r not in results]
    fn = spec.run_function() if todo else None
    base_dir = spec.resolve_base() if todo else None  # may train a base (cached): only when something is to run
    bar = tqdm(
        total=len(runs),
        initial=len(outcome.skipped),
        desc=spec.name,
        unit="run",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for run in todo:
        bar.set_postfix_str(f"skipped {len(outcome.skipped)}, failed {len(outcome.failed)}, now: {run.label}")
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / ERROR_FILE).unlink(missing_ok=True)
        (run.run_dir / ARGS_FILE).write_text(json.dumps(run_args(spec, run), indent=1))
        try:
            result = fn(base_dir, run.run_dir, **run.kwargs)
            if not isinstance(result, dict):
                raise TypeError(f"{spec.run} returned {type(result).__name__}, expected a dict")
            result_file = run.run_dir / RESULT_FILE
            if not result_file.exists():  # a run function without @resumable: store it here
                result_file.write_text(json.dumps(result))
            outcome.results[run] = result
            outcome.ran.append(run)
        except Exception as err:  # one broken run must not cost the others (KeyboardInterrupt still stops)
            (run.run_dir / ERROR_FILE).write_text(traceback.format_exc())
            outcome.failed[run] = f"{type(err).__name__}: {err}".splitlines()[0]
            bar.write(f"FAILED {run.label}: {outcome.failed[run]} (traceback in {run.run_dir / ERROR_FILE})")
        bar.update(1)
    bar.set_postfix_str(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)}, failed {len(outcome.failed)}")
    bar.close()
    return outcome


def code_version() -> str | None:
    """The commit the package code is at (`git rev-parse --short HEAD`), with "+local changes" when its tracked files
    differ from that commit; None outside a git checkout. Recorded with the results, since a rerun on other code may
    give other numbers."""
    package = Path(__file__).resolve().parents[1]
    try:

        def git(*args):
            return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, check=True).stdout

        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" +local changes" if dirty else "")


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def dry_run(spec: Spec, runs: list[Run]) -> str:
    """The grid as a table (one line per task/variant, one column per seed: done / to run) and the estimated time
    of what is left: the mean `train_seconds` of the same variant's finished runs, else the spec's
    `estimate_seconds_per_run` (training time only: evaluation and loading come on top)."""
    results, notes = check_finished(spec, runs)
    seeds = list(dict.fromkeys(r.seed for r in runs))
    rows = list(dict.fromkeys((r.task, r.variant) for r in runs))
    names = {row: f"{row[0]} / {row[1]}" if row[0] else row[1] for row in rows}
    width = max(len(n) for n in [*names.values(), "variant"])
    lines = [
        f"{spec.name}: {len(runs)} runs ({len(rows)} variants{' x tasks' if spec.tasks else ''} x {len(seeds)} "
        f"seeds), {len(results)} finished, {len(runs) - len(results)} to run; out: {spec.out}",
        "",
        f"{'variant':<{width}}  " + "  ".join(f"seed {s:<3}" for s in seeds) + "  s/run",
    ]
    total, unknown = 0.0, 0
    for row in rows:
        row_runs = [r for r in runs if (r.task, r.variant) == row]
        times = [
            results[r]["train_seconds"]
            for r in row_runs
            if r in results and isinstance(results[r].get("train_seconds"), (int, float))
        ]
        per_run = sum(times) / len(times) if times else spec.estimate_seconds_per_run
        left = sum(r not in results for r in row_runs)
        if left and per_run is None:
            unknown += left
        elif left:
            total += left * per_run
        cells = "  ".join(f"{'done' if r in results else 'to run':<8}" for r in row_runs)
        source = "" if per_run is None else f"{per_run:.0f}" + ("" if times else " (spec)")
        lines.append(f"{names[row]:<{width}}  {cells}  {source or '?'}")
    lines.append("")
    lines.append(
        f"estimated time for the {len(runs) - len(results)} runs to do: {_duration(total)}"
        + (f" + {unknown} run(s) without an estimate (set estimate_seconds_per_run)" if unknown else "")
    )
    return "\n".join(notes + lines)
