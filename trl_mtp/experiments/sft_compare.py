"""Experiment: next-token SFT vs MTP-SFT from the same pretrained tiny base (issue 4's first score experiment).

    python -m trl_mtp.experiments.sft_compare --out runs/sft_compare   # the grid; re-running only re-prints
    python -m trl_mtp.experiments.sft_compare --out runs/sft_compare --lm   # held-out NLL after SFT on stdlib

Grid: NTP, and every head family x D in {1, 2, 4} (coupled, lambda 0.3), each for several seeds, all with the same
optimizer steps on the mixture of star-graph path finding and arithmetic; held-out greedy exact match per task with
90% bootstrap CIs (seeds then items, Gloeckle et al.), and the paired difference to NTP (same seeds, same items).
Finished runs are skipped, so an interrupted grid resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trl_mtp.experiments import run_dir_name
from trl_mtp.experiments.bootstrap import bootstrap_ci_seeds, bootstrap_diff_ci
from trl_mtp.experiments.sft_runs import run_sft

FAMILIES = ("blockwise", "parallel", "sequential", "medusa")
# Smaller than the tasks' defaults: with these, a 1.1M-parameter base learns something in 1500 steps (on the
# defaults every variant stays at 0, which compares nothing). Star-graph with path length 3: the answer is
# start, middle, goal, and the middle node is the one next-token training is known to get wrong.
TASKS = {"star_graph": {"degree": 2, "path_length": 3, "nodes": 20}, "arithmetic": {"digits": 2}}


def variants(depths=(1, 2, 4)) -> dict[str, dict | None]:
    grid = {"NTP": None}
    for family in FAMILIES:
        for d in depths:
            grid[f"{family} D={d}"] = {"head_type": family, "num_mtp_heads": d}
    return grid


def run_grid(out: Path, base_dir, seeds, steps: int, eval_n: int, depths) -> dict:
    results = {}
    for seed in seeds:  # seed-major: a grid cut short still compares every variant on the seeds it finished
        for label, mtp in variants(depths).items():
            run_dir = out / run_dir_name(label) / f"seed{seed}"
            print(f"[{label} seed {seed}]", flush=True)
            results[(label, seed)] = run_sft(base_dir, run_dir, tasks=TASKS, mtp=mtp, seed=seed, steps=steps,
                                             eval_n=eval_n)
    return results


def table(results: dict, seeds) -> str:
    labels = list(dict.fromkeys(label for label, _ in results))
    lines = ["| variant | " + " | ".join(f"{t} acc [90% CI] | diff vs NTP [90% CI]" for t in TASKS) + " |",
             "| --- |" + " --- | --- |" * len(TASKS)]
    for label in labels:
        cells = []
        for task in TASKS:
            per_seed = [results[(label, s)]["tasks"][task]["correct"] for s in seeds if (label, s) in results]
            mean, low, high = bootstrap_ci_seeds(per_seed)
            cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
            if label == "NTP":
                cells.append("")
                continue
            done = [s for s in seeds if (label, s) in results and ("NTP", s) in results]
            ntp = [x for s in done for x in results[("NTP", s)]["tasks"][task]["correct"]]
            ours = [x for s in done for x in results[(label, s)]["tasks"][task]["correct"]]
            d, dl, dh = bootstrap_diff_ci(ours, ntp)
            cells.append(f"{d:+.3f} [{dl:+.3f}, {dh:+.3f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lm_table(out: Path, base_dir, seeds, steps: int, eval_n: int) -> str:
    """Held-out next-token loss on the stdlib corpus after SFT on stdlib text: NTP vs each family at D=2."""
    import numpy as np

    grid = {"NTP": None, **{f"{f} D=2": {"head_type": f, "num_mtp_heads": 2} for f in FAMILIES}}
    lines = ["| variant | held-out NLL (nats/token), mean over seeds [min, max] | diff vs NTP, same seed (mean) |",
             "| --- | --- | --- |"]
    nll = {}
    for seed in seeds:
        for label, mtp in grid.items():
            run_dir = out / "stdlib" / run_dir_name(label) / f"seed{seed}"
            print(f"[stdlib {label} seed {seed}]", flush=True)
            result = run_sft(base_dir, run_dir, tasks={"stdlib": {"chunk_chars": 1000}}, mtp=mtp, seed=seed,
                             steps=steps, eval_n=eval_n, max_length=256)
            nll[(label, seed)] = result["tasks"]["stdlib"]["nll"]
    for label in grid:
        values = np.array([nll[(label, s)] for s in seeds])
        diffs = np.array([nll[(label, s)] - nll[("NTP", s)] for s in seeds])
        lines.append(f"| {label} | {values.mean():.4f} [{values.min():.4f}, {values.max():.4f}] | "
                     + ("" if label == "NTP" else f"{diffs.mean():+.4f}") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trl_mtp.experiments.sft_compare")
    parser.add_argument("--out", default="runs/sft_compare")
    parser.add_argument("--preset", default="tiny-llama")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--lm", action="store_true", help="the stdlib language-modelling comparison instead")
    args = parser.parse_args(argv)

    from trl_mtp.pretrain import pretrain_base

    base_dir = pretrain_base(args.preset, "mix", steps=args.pretrain_steps, seed=0)
    out = Path(args.out)
    if args.lm:
        text = lm_table(out, base_dir, args.seeds, args.steps, eval_n=50)
        (out / "lm_table.md").write_text(text + "\n")
        print(text)
        return 0
    results = run_grid(out, base_dir, args.seeds, args.steps, args.eval_n, args.depths)
    text = table(results, args.seeds)
    (out / "table.md").write_text(text + "\n")
    (out / "runs.json").write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in results.items()}))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
