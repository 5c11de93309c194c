"""`trl-mtp bench <name> [args]`: run a benchmark module (`main(argv) -> int`), imported only when it runs."""

from __future__ import annotations

import importlib

# benchmark name -> module with main(argv) -> int
BENCHMARKS: dict[str, str] = {
    "train-step": "trl_mtp.benchmarks.train_step",
    "decode": "trl_mtp.benchmarks.decode",
    "rl-rollouts": "trl_mtp.benchmarks.rl_rollouts",
}

USAGE = "usage: trl-mtp bench {" + ",".join(BENCHMARKS) + "} [args...]  (`trl-mtp bench <name> --help` for args)"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return int(importlib.import_module(BENCHMARKS[name]).main(rest) or 0)
