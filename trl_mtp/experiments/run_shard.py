"""Run one shard of a spec's grid, so that several processes share a grid of small single-threaded runs.

    python -m trl_mtp.experiments.run_shard SPEC.yaml SHARD SHARDS [VARIANT ...]

Shard k of n runs every n-th run of the grid (seed-major, as the runner orders it) from the k-th, through the
runner's own `run_grid`: the same run folders, `run_args.json`, resume and failure handling, so
`trl-mtp experiment SPEC --table-only` reads the finished runs afterwards. Shards never share a run, so n
processes on disjoint shards never run anything twice (one runner per grid would).
"""

from __future__ import annotations

import sys


def run_shard(spec_path, shard: int, shards: int, only: list[str] | None = None) -> int:
    """Run shard `shard` of `shards` (variants `only`, or all); returns the number of failed runs."""
    from trl_mtp.experiments.runner import check_finished, run_grid
    from trl_mtp.experiments.spec import load_spec

    if not 0 <= shard < shards:
        raise ValueError(f"shard={shard}: must be in 0..{shards - 1}")
    spec = load_spec(spec_path)
    unknown = sorted(set(only or ()) - set(spec.variants))
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; the spec has {', '.join(spec.variants)}")
    runs = spec.grid(only or None)[shard::shards]
    finished, _ = check_finished(spec, runs)
    outcome = run_grid(spec, runs, finished, progress=False)
    for run in outcome.ran:
        print(f"finished {run.label}", flush=True)
    return len(outcome.failed)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python -m trl_mtp.experiments.run_shard SPEC.yaml SHARD SHARDS [VARIANT ...]")
    sys.exit(1 if run_shard(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] or None) else 0)
