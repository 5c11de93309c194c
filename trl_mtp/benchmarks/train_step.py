"""Benchmark: one forward+backward training step with MTP heads vs plain next-token training (NTP).

For each head family and D in {1, 2, 4} (by default) on the same randomly initialised base model:
- time: one step (forward + backward, no optimizer), repetitions interleaved with NTP steps in the same process
  so that machine load hits both alike; the median over repetitions, as a ratio to NTP's median.
- peak memory: the process's peak resident set during one step (Linux VmHWM, reset just before the step through
  /proc/self/clear_refs) minus its resident set before the step (after one warm-up step); each variant in a fresh subprocess whose glibc
  malloc returns every large block to the OS at once (MALLOC_MMAP_THRESHOLD_=65536), so this follows the peak of
  live tensor bytes (activations, logits, gradients) of that step; as a ratio to the NTP subprocess. It counts
  everything the step allocates on the CPU, parameter gradients included, and not the model itself.
NTP is the base model's own `forward(labels=...)` loss (transformers' CE on full logits); MTP is
`MTPForCausalLM.forward(labels=...)` (main CE + lambda * MTP loss), both with `use_cache=False`.

    trl-mtp bench train-step --vocab 32000 --seq-len 512 --batch 1 --hidden 256 --layers 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from trl_mtp.benchmarks import parse_families
from trl_mtp.config import HEAD_TYPES

TARGET_TIME = {"blockwise": 1.3, "medusa": 1.3, "parallel": 1.6, "sequential": 1.6}  # at D = 4
TARGET_MEMORY = 1.15


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="trl-mtp bench train-step", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small-llama", help="model preset of trl_mtp.embedded.presets")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=None, help="override the preset's hidden size")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    parser.add_argument("--families", default=",".join(HEAD_TYPES))
    parser.add_argument("--depths", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="activation checkpointing in the base (NTP and MTP alike; heads follow it)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one variant's memory
    args = parser.parse_args(argv)
    args.families = parse_families(args.families)
    args.depths = [int(d) for d in args.depths.split(",") if d]
    if any(d < 1 for d in args.depths):
        raise ValueError(f"--depths: each must be >= 1, got {args.depths}")
    for name in ("vocab", "seq_len", "batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def build_base(args):
    from trl_mtp.embedded.presets import build_model

    overrides = {}
    gpt2 = "gpt2" in args.preset
    if args.hidden is not None:
        overrides.update(
            {"n_embd": args.hidden} if gpt2 else {"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden}
        )
    if args.layers is not None:
        overrides.update({"n_layer": args.layers} if gpt2 else {"num_hidden_layers": args.layers})
    overrides.update(
        {"n_positions": max(1024, args.seq_len)} if gpt2 else {"max_position_embeddings": max(1024, args.seq_len)}
    )
    model = build_model(args.preset, args.vocab, seed=0, **overrides)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def make_step(base, variant: str):
    """A zero-argument function running one forward+backward step of `variant` ("ntp" or "family:D")."""
    from trl_mtp import MTPConfig, MTPForCausalLM

    if variant == "ntp":

        def step(ids):
            base.zero_grad(set_to_none=True)
            base(input_ids=ids, labels=ids, use_cache=False).loss.backward()

        return step, None
    family, depth = variant.split(":")
    model = MTPForCausalLM.from_base(base, MTPConfig(head_type=family, num_mtp_heads=int(depth)))

    def step(ids):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    return step, model


def measure_memory_child(args) -> dict:
    """In a fresh process: peak RSS during one step of `args.memory_child` minus RSS before it (MiB)."""
    import torch

    torch.set_num_threads(args.threads)
    base = build_base(args)
    step, _ = make_step(base, args.memory_child)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    step(ids)  # warm-up: one-time allocations (thread pools, workspaces) are not the step's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    step(ids)
    return {"variant": args.memory_child, "peak_step_mib": (_status_kib("VmHWM") - before) / 1024}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_of(variant: str, argv: list[str]) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "trl_mtp.benchmarks.train_step", *argv, "--memory-child", variant]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_step_mib"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(measure_memory_child(args)))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    base = build_base(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    variants = ["ntp"] + [f"{family}:{depth}" for family in args.families for depth in args.depths]
    steps, wrappers = {}, []
    for variant in variants:
        steps[variant], wrapper = make_step(base, variant)
        if wrapper is not None:
            wrapper.trunk.remove_hooks()  # one wrapper's hooks live at a time (they share the base)
            wrappers.append((variant, wrapper))
    hooks_of = dict(wrappers)

    times = {v: [] for v in variants}
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        for variant in variants:
            if variant in hooks_of:
                hooks_of[variant].trunk.install_hooks()
            start = time.perf_counter()
            steps[variant](ids)
            elapsed = time.perf_counter() - start
            if variant in hooks_of:
                hooks_of[variant].trunk.remove_hooks()
            if repeat > 0:
                times[variant].append(elapsed)
        print(f"repeat {repeat}/{args.repeats} done", file=sys.stderr)

    child_argv = [a for a in argv if a != "--no-memory"]
    if "--json" in child_argv:
        i = child_argv.index("--json")
        del child_argv[i : i + 2]
    memory = {} if args.no_memory else {v: memory_of(v, child_argv) for v in variants}

    ntp_time = statistics.median(times["ntp"])
    rows = []
    for variant in variants:
        family, depth = ("ntp", 0) if variant == "ntp" else (variant.split(":")[0], int(variant.split(":")[1]))
        row = {
            "family": family,
            "num_mtp_heads": depth,
            "step_s": statistics.median(times[variant]),
            "time_ratio": statistics.median(times[variant]) / ntp_time,
        }
        if memory:
            row.update(peak_step_mib=memory[variant], memory_ratio=memory[variant] / max(memory["ntp"], 1e-9))
        rows.append(row)

    print(
        f"train step, preset {args.preset}, vocab {args.vocab}, batch {args.batch} x seq {args.seq_len}, "
        f"hidden {base.config.get_text_config().hidden_size}, layers {base.config.num_hidden_layers}, "
        f"{args.threads} thread(s), median of {args.repeats}"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
    )
    print(f"{'family':<11}{'D':>3}{'step s':>9}{'time x':>8}{'peak MiB':>10}{'mem x':>7}   targets (D=4)")
    for row in rows:
        target = ""
        if row["num_mtp_heads"] == 4:
            target = f"time <= {TARGET_TIME[row['family']]}, mem <= {TARGET_MEMORY}"
        mem = f"{row['peak_step_mib']:>10.1f}{row['memory_ratio']:>7.2f}" if memory else f"{'-':>10}{'-':>7}"
        print(
            f"{row['family']:<11}{row['num_mtp_heads']:>3}{row['step_s']:>9.3f}{row['time_ratio']:>8.2f}{mem}   {target}"
        )
    if args.json:
        result = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "memory_child")},
            "hidden": base.config.get_text_config().hidden_size,
            "layers": base.config.num_hidden_layers,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
