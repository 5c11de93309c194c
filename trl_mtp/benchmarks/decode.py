"""Benchmark: self-speculative decoding with trained MTP heads vs plain greedy `generate`, our own plain loop and
prompt lookup.

Same base model (a tiny Llama pretrained on standard-library code), same prompts (held-out stdlib files), one run:
- `greedy`: `base.generate(do_sample=False)`;
- `loop-k0`: `speculative_generate(num_draft_tokens=0)`: our own loop, one token per base forward (the bare greedy
  loop: part of any speed-up over `generate` is `generate`'s own overhead, this baseline has ours instead);
- `prompt_lookup`: `base.generate(prompt_lookup_num_tokens=10)` (transformers supports it at batch 1 only);
- `mtp-<family>`: `speculative_generate` with that family's heads (D = 4, MTP-SFT, `decode_models.trained_models`);
  with `--fixed-k`, also `mtp-<family>-k<j>` (j drafts per round) and with `--adaptive`, `mtp-<family>-adaptive`
  (`adaptive_draft_tokens`: one planner per method and batch size, learning from the warm-up on and carried over the
  repetitions, as a trainer's planner is over its rollouts).
Protocol per batch size: every method runs once untimed (warm-up), then `--repeats` repetitions, each running every
method once in a freshly shuffled order over all prompts; per repetition the time ratio of a baseline to a method is
its speed-up, reported as the median and interquartile range over repetitions (machine load moves a repetition's
methods alike, so ratios within a repetition are steadier than ratios of totals).
Ceiling (per method and batch size), from one instrumented pass each: the time the k = 0 loop spends inside base
forwards over the time the method spends inside base forwards and in its drafter (the heads' own cost). Both are
measured in the loop, on the real batches, so the verify cost of D + 1 tokens and the slowest-row factor (a batch
runs until its longest row ends) are in it; `fraction_of_ceiling` = speed-up over k = 0 / ceiling.

    trl-mtp bench decode                  # trains and caches the heads on first use, then ~ a few minutes
    trl-mtp bench decode --quick          # tiny models, two prompts: a smoke test
    trl-mtp bench decode --native DIR     # a native-MTP checkpoint (`trl-mtp export --native`): greedy, prompt
                                          # lookup, transformers' generate(use_mtp=True), ours on the same layers
    trl-mtp bench decode --record-trace T # the trained models' accepted length of every round (batch 1) -> T
    trl-mtp bench decode --replay T       # T replayed by oracle drafts on a larger random-weight model: the engine
                                          # at a realistic forward cost (`trl_mtp.benchmarks.replay`)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import random
import statistics
import time

import torch

from trl_mtp.adaptive_drafting import DraftPlanner
from trl_mtp.benchmarks import parse_families, replay
from trl_mtp.benchmarks.decode_models import trained_models
from trl_mtp.config import HEAD_TYPES
from trl_mtp.decoding import left_pad


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="trl-mtp bench decode", description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(HEAD_TYPES))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (each in a shuffled order)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled orders")
    parser.add_argument("--pretrain-task", default="stdlib", help="the base's pretraining data ('stdlib', 'mix')")
    parser.add_argument("--preset", default="tiny-llama", help="the base's model preset (`trl_mtp.embedded.presets`)")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="pretraining steps of the base")
    parser.add_argument(
        "--fixed-k", default="", help="comma-separated draft counts j (< D) run as methods mtp-<family>-k<j>"
    )
    parser.add_argument("--adaptive", action="store_true", help="also run mtp-<family>-adaptive")
    parser.add_argument("--head-steps", type=int, default=300, help="MTP-SFT steps of each family's heads")
    parser.add_argument("--head-texts", type=int, default=1024, help="self-distillation texts the heads train on")
    parser.add_argument(
        "--reference-engine",
        default=None,
        metavar="FILE",
        help="another decoding.py (e.g. main's, "
        "before a change): its k = 0 loop and families run too, as '<method>@ref', side by side",
    )
    parser.add_argument("--quick", action="store_true", help="tiny training and run (tests, smoke checks)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--native",
        default=None,
        metavar="DIR",
        help="a checkpoint with native MTP layers: compare "
        "transformers' generate(use_mtp=True) with our speculative_generate on them (batch 1)",
    )
    replay_help = {  # the replay benchmark (`trl_mtp.benchmarks.replay`)
        "--record-trace": "write each round's accepted length of every family's heads (batch 1) here, then stop",
        "--replay": "replay a --record-trace file by oracle drafts on a random-weight --replay-preset model",
    }
    for flag, text in replay_help.items():
        parser.add_argument(flag, default=None, metavar="FILE", help=text)
    parser.add_argument("--replay-preset", default="small-llama", help="the replay's random-weight base preset")
    args = parser.parse_args(argv)
    args.families = parse_families(args.families)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.fixed_k = [int(k) for k in args.fixed_k.split(",") if k]
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.quick:
        args.prompts, args.max_new_tokens, args.repeats, args.prompt_tokens = 2, 16, 2, 32
        args.batch_sizes = [b for b in args.batch_sizes if b <= 2] or [1]
    if args.native:
        args.batch_sizes = [1]  # transformers' use_mtp decodes one sequence at a time
    if args.replay and (args.native or args.record_trace or args.reference_engine or args.fixed_k or args.adaptive):
        raise ValueError(
            "--replay runs the trace's families only (no --native, --record-trace, --reference-engine, "
            "--fixed-k or --adaptive)"
        )
    return args


# ----------------------------------------------------------------------------------------------------------------------
# statistics of the repetitions
# ----------------------------------------------------------------------------------------------------------------------
def shuffled_orders(methods: list[str], repeats: int, seed: int) -> list[list[str]]:
    """One order of the methods per repetition, each a fresh shuffle (seeded)."""
    rng = random.Random(seed)
    return [rng.sample(methods, len(methods)) for _ in range(repeats)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), linear interpolation between order statistics (one value: itself)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def ratio_summary(baseline_seconds: list[float], method_seconds: list[float]) -> dict:
    """Speed-up of a method over a baseline from their times per repetition (paired by repetition): the median and
    interquartile range of the per-repetition ratios baseline / method."""
    if len(baseline_seconds) != len(method_seconds):
        raise ValueError(
            f"ratio_summary needs paired repetitions, got {len(baseline_seconds)} and {len(method_seconds)} times"
        )
    q1, median, q3 = quartiles([b / m for b, m in zip(baseline_seconds, method_seconds)])
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}


# ----------------------------------------------------------------------------------------------------------------------
# running the methods
# ----------------------------------------------------------------------------------------------------------------------
def held_out_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    from trl_mtp.embedded.tasks.registry import get_task

    prompts = []
    for text in get_task("stdlib").texts("eval"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == n:
            break
    return prompts


REFERENCE = "@ref"
ENGINES = {}  # "@ref": the module given by --reference-engine
PLANNERS = {}  # adaptive method -> its planner (reset per batch size)
DECODERS = {}  # method -> its own decode(ids, mask, max_new_tokens, pad) -> (output, stats): the replay's oracle runs


def load_engine(path: str):
    """A decoding module from another file (same package imports), for before/after runs side by side."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("trl_mtp_reference_decoding", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def engine_of(name: str):
    """(decoding module, method name without the engine suffix)."""
    import trl_mtp.decoding

    if name.endswith(REFERENCE):
        return ENGINES[REFERENCE], name[: -len(REFERENCE)]
    return trl_mtp.decoding, name


def speculative_settings(name: str, models: dict) -> tuple:
    """(model, speculative_generate settings) of a speculative method: `loop-k0`, `mtp-<family>`,
    `mtp-<family>-k<j>` or `mtp-<family>-adaptive`."""
    if name == "loop-k0":
        return next(iter(models.values())), {"num_draft_tokens": 0}
    if name in models:
        return models[name], {}
    family, _, variant = name.rpartition("-")
    if variant == "adaptive":
        planner = PLANNERS.setdefault(name, DraftPlanner(models[family].heads.num_depths))
        return models[family], {"adaptive_draft_tokens": planner}
    return models[family], {"num_draft_tokens": int(variant.removeprefix("k"))}


def decode(name, models, base, ids, mask, max_new_tokens, pad):
    """(output, stats or None) of one method on one batch."""
    full_name = name
    engine, name = engine_of(name)
    settings = dict(attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    with torch.no_grad():
        if name in DECODERS:
            return DECODERS[name](ids, mask, max_new_tokens, pad)
        if name == "greedy":
            return base.generate(ids, **settings), None
        if name == "prompt_lookup":
            return base.generate(ids, prompt_lookup_num_tokens=10, **settings), None
        if name == "transformers-use_mtp":  # reads the MTP tensors from the checkpoint at every call
            return base.generate(ids, use_mtp=True, **settings), None
        model, settings = speculative_settings(name, models)
        if full_name != name and "adaptive_draft_tokens" in settings:  # the reference engine's own planner class
            settings["adaptive_draft_tokens"] = PLANNERS.setdefault(
                full_name, engine.DraftPlanner(model.heads.num_depths)
            )
        return engine.speculative_generate(
            model, ids, mask, max_new_tokens=max_new_tokens, pad_token_id=pad, **settings
        )


def run_method(name, models, base, batches, max_new_tokens, pad):
    """(seconds, new tokens, outputs, stats list) of one method over all batches."""
    tokens, seconds, outputs, stats = 0, 0.0, [], []
    for ids, mask in batches:
        start = time.perf_counter()
        out, st = decode(name, models, base, ids, mask, max_new_tokens, pad)
        seconds += time.perf_counter() - start
        new = out[:, ids.size(1) :]
        tokens += int(((new != pad) | (torch.arange(new.size(1))[None] == 0)).sum())
        outputs.append(out)
        if st is not None:
            stats.append(st)
    return seconds, tokens, outputs, stats


@contextlib.contextmanager
def timed_calls(targets):
    """Inside, each (owner, attribute) in `targets` is a function that adds its wall time to `totals[label]`; the
    originals come back on exit. -> totals (label -> seconds)."""
    totals = {}
    saved = []
    for label, owner, attribute in targets:
        original = getattr(owner, attribute)
        saved.append((owner, attribute, owner.__dict__.get(attribute)))
        totals.setdefault(label, 0.0)

        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - start

        setattr(owner, attribute, timed)
    try:
        yield totals
    finally:
        for owner, attribute, value in reversed(saved):
            if value is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, value)


def in_loop_times(name, models, base, batches, max_new_tokens, pad) -> dict:
    """Seconds one pass of a method spends inside base forwards (`forward_s`) and inside its drafter's propose and
    observe stages (`drafting_s`: the heads' own cost), on the real batches, and the pass's own time (`wall_s`: the
    rest of it is the engine's work outside forwards and heads). CPU: calls are synchronous."""
    drafters = set(engine_of(name)[0].DRAFTERS.values())
    # every head set has a base of its own (the same weights): time whichever the method runs
    bases = {id(b): b for b in [base] + [model.base_model for model in models.values()]}
    targets = [("forward_s", b, "forward") for b in bases.values()]
    targets += [("drafting_s", drafter, stage) for drafter in drafters for stage in ("propose", "observe")]
    with timed_calls(targets) as totals:
        totals["wall_s"] = run_method(name, models, base, batches, max_new_tokens, pad)[0]
    return totals


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return run_benchmark(args)
    finally:
        DECODERS.clear()  # a replay's decoders (its models, its oracle) end with its run


def run_benchmark(args) -> int:
    if args.replay:
        models, prompts, pad, info = replay_setup(args)
    else:
        models, prompts, pad, info = trained_setup(args)
    if args.record_trace:
        source = {name: vars(args)[name] for name in ("preset", "pretrain_task", "pretrain_steps", "head_steps")}
        source.update(head_texts=args.head_texts, model_dirs=info["model_dirs"])
        replay.record_trace(models, prompts, args.max_new_tokens, pad, source).save(args.record_trace)
        print(f"wrote {args.record_trace}: {len(models)} families x {len(prompts)} prompts, batch 1", flush=True)
        return 0
    base = next(iter(models.values())).base_model  # every head set sits on the same base weights
    if args.reference_engine:
        ENGINES[REFERENCE] = load_engine(args.reference_engine)
    results = {
        "config": dict(vars(args)),
        "num_depths": next(iter(models.values())).heads.num_depths,
        "load_average_start": os.getloadavg(),
        **info,
        "batches": {},
    }
    for batch_size in args.batch_sizes:
        batches = [left_pad(prompts[i : i + batch_size], pad) for i in range(0, len(prompts), batch_size)]
        methods = (
            ["greedy", "loop-k0"]
            + (["prompt_lookup"] if batch_size == 1 and not args.replay else [])
            + (["transformers-use_mtp"] if args.native else [])
            + list(models)
            + [f"{m}-k{k}" for m in models for k in args.fixed_k]
            + ([f"{m}-adaptive" for m in models] if args.adaptive else [])
        )
        PLANNERS.clear()  # a fresh planner per method at every batch size
        if args.reference_engine:
            methods += [m + REFERENCE for m in methods if m == "loop-k0" or m in models]
        results["batches"][str(batch_size)] = bench_batch_size(methods, models, base, batches, args, pad)
    results["load_average_end"] = os.getloadavg()
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.replay:  # the lossless check, and the proof that the oracle followed the reference
        differ = [
            f"{m} at batch {b}"
            for b, rows in results["batches"].items()
            for m, r in rows.items()
            if not r["identical_to_greedy"]
        ]
        if differ:
            raise ValueError(f"replay: output differs from greedy decoding's for {', '.join(differ)}")
    return 0


def trained_setup(args) -> tuple[dict, list, int, dict]:
    """(models, prompts, pad id, what to report) of the trained models (or a native checkpoint's) on held-out code."""
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM

    if args.native:
        from trl_mtp.native import allow_stock_mtp

        dirs = {"sequential": args.native}
    else:
        train = (
            dict(pretrain_steps=30, head_steps=10, n_texts=64)
            if args.quick
            else dict(pretrain_steps=args.pretrain_steps, head_steps=args.head_steps, n_texts=args.head_texts)
        )
        dirs = trained_models(
            args.preset, args.families, verbose=not args.quick, pretrain_task=args.pretrain_task, **train
        )
    tokenizer = AutoTokenizer.from_pretrained(next(iter(dirs.values())))
    models = {f"mtp-{f}": MTPForCausalLM.from_pretrained(d).eval() for f, d in dirs.items()}
    if args.native:
        allow_stock_mtp(next(iter(models.values())).base_model)  # stock transformers finds the MTP tensors then
    prompts = held_out_prompts(tokenizer, args.prompts, args.prompt_tokens)
    return models, prompts, tokenizer.pad_token_id, {"model_dirs": {k: str(v) for k, v in dirs.items()}}


def replay_setup(args) -> tuple[dict, list, int, dict]:
    """(models, prompts, pad id, what to report) of a replay: the trace's families on random-weight
    `--replay-preset` models, each registered in `DECODERS` to draft with the oracle."""
    from trl_mtp.embedded.presets import count_parameters

    trace = replay.Trace.load(args.replay)
    families = [f for f in args.families if f in trace.rounds]
    if not families:
        raise ValueError(
            f"--replay {args.replay}: no rounds for {', '.join(args.families)} (it has {', '.join(trace.rounds)})"
        )
    trace = dataclasses.replace(trace, head_configs={f: trace.head_configs[f] for f in families})
    models = replay.replay_models(trace, args.replay_preset, seed=args.seed)
    base = next(iter(models.values())).base_model
    plan = replay.prepare_replay(trace, base, trace.pad_token_id, args.max_new_tokens, args.prompts)
    DECODERS.update({m: functools.partial(replay.replay_decode, model, plan) for m, model in models.items()})
    info = {
        "replay": {
            "trace": args.replay,
            "preset": args.replay_preset,
            "parameters": count_parameters(base),
            "trace_num_draft_tokens": trace.num_draft_tokens,
            "trace_source": trace.source,
        }
    }
    return models, plan.trace.prompts, trace.pad_token_id, info


def bench_batch_size(methods, models, base, batches, args, pad) -> dict:
    """Warm-up, shuffled timed repetitions and one instrumented pass per method: its row per method."""
    for m in methods:  # warm-up: one untimed pass on the first batch
        run_method(m, models, base, batches[:1], args.max_new_tokens, pad)
    seconds = {m: [] for m in methods}
    tokens, outputs, stats = {}, {}, {}
    for order in shuffled_orders(methods, args.repeats, args.seed):
        for m in order:
            elapsed, tokens[m], outputs[m], stats[m] = run_method(m, models, base, batches, args.max_new_tokens, pad)
            seconds[m].append(elapsed)
    speculative = {m for m in methods if engine_of(m)[1] == "loop-k0" or engine_of(m)[1].startswith("mtp-")}
    loop = {m: in_loop_times(m, models, base, batches, args.max_new_tokens, pad) for m in speculative}
    rows = {}
    for m in methods:
        row = {
            "seconds": seconds[m],
            "tokens_per_s": tokens[m] / statistics.median(seconds[m]),
            "speedup_vs_generate": ratio_summary(seconds["greedy"], seconds[m]),
            "speedup_vs_loop_k0": ratio_summary(seconds["loop-k0"], seconds[m]),
            "identical_to_greedy": all(torch.equal(a, b) for a, b in zip(outputs[m], outputs["greedy"])),
        }
        if m in loop:
            row["in_loop"] = loop[m]
            row["outside_share"] = 1 - (loop[m]["forward_s"] + loop[m]["drafting_s"]) / loop[m]["wall_s"]
        if m in speculative and engine_of(m)[1] != "loop-k0":
            row.update(engine_of(m)[0].pool_acceptance(stats[m]))
            rounds = [n for st in stats[m] for n in st.get("draft_tokens_per_round", [])]
            if rounds:  # what each round drafted (the adaptive planner's choices), over the last repetition
                row["draft_tokens"] = sum(rounds) / len(rounds)
                row["draft_tokens_histogram"] = [rounds.count(k) for k in range(max(rounds) + 1)]
            row["ceiling_vs_loop_k0"] = loop["loop-k0"]["forward_s"] / (loop[m]["forward_s"] + loop[m]["drafting_s"])
            row["fraction_of_ceiling"] = row["speedup_vs_loop_k0"]["median"] / row["ceiling_vs_loop_k0"]
        rows[m] = row
    return rows


def print_table(results):
    print(
        f"D = {results['num_depths']}; speed-ups: median [IQR] of per-repetition ratios; ceiling: over the k = 0 "
        "loop, from in-loop forward and drafting times; outside: share of that pass outside forwards and heads"
    )
    print(
        f"{'batch':>5} {'method':<26} {'tok/s':>7} {'vs generate':>18} {'vs k=0 loop':>18} {'acc.len':>7} "
        f"{'drafts':>6} {'ceiling':>7} {'frac':>5} {'outside':>7} {'same':>5}  acceptance by position"
    )
    for batch, rows in results["batches"].items():
        for m, r in rows.items():

            def cell(summary):
                return f"{summary['median']:.2f} [{summary['q1']:.2f}-{summary['q3']:.2f}]"

            acc = " ".join(f"{a:.2f}" for a in r.get("acceptance_by_position", []))
            mal = f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else "-"
            ceil = f"{r['ceiling_vs_loop_k0']:.2f}" if "ceiling_vs_loop_k0" in r else "-"
            frac = f"{r['fraction_of_ceiling']:.2f}" if "fraction_of_ceiling" in r else "-"
            drafts = f"{r['draft_tokens']:.2f}" if "draft_tokens" in r else "-"
            outside = f"{r['outside_share']:.2f}" if "outside_share" in r else "-"
            print(
                f"{batch:>5} {m:<26} {r['tokens_per_s']:>7.1f} {cell(r['speedup_vs_generate']):>18} "
                f"{cell(r['speedup_vs_loop_k0']):>18} {mal:>7} {drafts:>6} {ceil:>7} {frac:>5} {outside:>7} "
                f"{str(r['identical_to_greedy']):>5}  {acc}"
            )
