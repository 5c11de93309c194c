"""Benchmark: self-speculative decoding with trained MTP heads vs plain greedy `generate` and prompt lookup.

Same base model (a tiny Llama pretrained on standard-library code), same prompts (held-out stdlib files), one run,
repetitions interleaved across methods so that machine load hits all alike:
- `greedy`: `base.generate(do_sample=False)`;
- `prompt_lookup`: `base.generate(prompt_lookup_num_tokens=10)` (transformers supports it at batch 1 only);
- `mtp-<family>`: `speculative_generate` with that family's heads (D = 4, MTP-SFT, `decode_models.trained_models`).
Reported per batch size: tokens/s, speed-up vs greedy, mean accepted length, acceptance by position, whether the
output equals greedy's, and the measured forward times t(1), t(D+1) (one / D+1 new tokens over a cache of the
prompt length + half the generation) with the ceiling they imply: mean_accepted_length * t(1) / t(D+1).

    trl-mtp bench decode                  # trains and caches the heads on first use, then ~ a few minutes
    trl-mtp bench decode --quick          # tiny models, two prompts: a smoke test
    trl-mtp bench decode --native DIR     # a native-MTP checkpoint (`trl-mtp export --native`): greedy, prompt
                                          # lookup, transformers' generate(use_mtp=True), ours on the same layers
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trl_mtp.benchmarks import parse_families
from trl_mtp.benchmarks.decode_models import FAMILIES, trained_models
from trl_mtp.decoding import left_pad, pool_acceptance


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="trl-mtp bench decode", description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny training and run (tests, smoke checks)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--native", default=None, metavar="DIR", help="a checkpoint with native MTP layers: compare "
                        "transformers' generate(use_mtp=True) with our speculative_generate on them (batch 1)")
    args = parser.parse_args(argv)
    args.families = parse_families(args.families)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.quick:
        args.prompts, args.max_new_tokens, args.repeats, args.prompt_tokens = 2, 16, 1, 32
        args.batch_sizes = [b for b in args.batch_sizes if b <= 2] or [1]
    if args.native:
        args.batch_sizes = [1]  # transformers' use_mtp decodes one sequence at a time
    return args


def held_out_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    from trl_mtp.tasks.registry import get_task

    prompts = []
    for text in get_task("stdlib").texts("eval"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == n:
            break
    return prompts


def forward_times(base, context: int, depth: int, repeats: int = 15) -> tuple[float, float]:
    """Median seconds of a cached forward over 1 and over depth+1 new tokens after `context` tokens."""
    from transformers import DynamicCache

    from trl_mtp.decoding import crop_cache

    ids = torch.randint(3, base.config.vocab_size, (1, context + depth + 1))
    cache = DynamicCache()
    with torch.no_grad():
        base(input_ids=ids[:, :context], past_key_values=cache, use_cache=True)
        times = {1: [], depth + 1: []}
        for _ in range(repeats):
            for n in times:
                start = time.perf_counter()
                base(input_ids=ids[:, context:context + n], past_key_values=cache, use_cache=True)
                times[n].append(time.perf_counter() - start)
                crop_cache(cache, context)
    return statistics.median(times[1]), statistics.median(times[depth + 1])


def run_method(name, models, base, batches, max_new_tokens, pad):
    """(new tokens, seconds, outputs, stats list) of one method over all batches."""
    tokens, seconds, outputs, stats = 0, 0.0, [], []
    for ids, mask in batches:
        start = time.perf_counter()
        with torch.no_grad():
            if name == "greedy":
                out = base.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad)
            elif name == "prompt_lookup":
                out = base.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad, prompt_lookup_num_tokens=10)
            elif name == "transformers-use_mtp":  # reads the MTP tensors from the checkpoint at every call
                out = base.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad, use_mtp=True)
            else:
                out, st = models[name].speculative_generate(ids, mask, max_new_tokens=max_new_tokens, pad_token_id=pad)
                stats.append(st)
        seconds += time.perf_counter() - start
        new = out[:, ids.size(1):]
        tokens += int(((new != pad) | (torch.arange(new.size(1))[None] == 0)).sum())
        outputs.append(out)
    return tokens, seconds, outputs, stats


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM

    if args.native:
        from trl_mtp.native import allow_stock_mtp

        dirs = {"sequential": args.native}
    else:
        train = dict(pretrain_steps=30, head_steps=10, n_texts=64) if args.quick else {}
        dirs = trained_models(families=args.families, verbose=not args.quick, **train)
    tokenizer = AutoTokenizer.from_pretrained(next(iter(dirs.values())))
    pad = tokenizer.pad_token_id
    models = {f"mtp-{f}": MTPForCausalLM.from_pretrained(d).eval() for f, d in dirs.items()}
    base = next(iter(models.values())).base_model  # every head set sits on the same base weights
    if args.native:
        allow_stock_mtp(base)  # stock transformers then finds the MTP tensors whatever the model's depth
    D = next(iter(models.values())).heads.num_depths
    prompts = held_out_prompts(tokenizer, args.prompts, args.prompt_tokens)
    t1, tD = forward_times(base, args.prompt_tokens + args.max_new_tokens // 2, D)
    results = {"config": {k: v for k, v in vars(args).items()}, "t1_s": t1, "tD1_s": tD, "num_depths": D,
               "model_dirs": {k: str(v) for k, v in dirs.items()}, "batches": {}}
    for batch_size in args.batch_sizes:
        batches = [left_pad(prompts[i:i + batch_size], pad) for i in range(0, len(prompts), batch_size)]
        methods = ["greedy"] + (["prompt_lookup"] if batch_size == 1 else []) + (
            ["transformers-use_mtp"] if args.native else []) + list(models)
        acc = {m: {"tokens": 0, "seconds": 0.0, "stats": []} for m in methods}
        reference = None
        for _ in range(args.repeats):  # interleaved: every method once per repetition
            for m in methods:
                tokens, seconds, outputs, stats = run_method(m, models, base, batches, args.max_new_tokens, pad)
                acc[m]["tokens"] += tokens
                acc[m]["seconds"] += seconds
                acc[m]["stats"] = stats
                if m == "greedy":
                    reference = outputs
                acc[m]["identical"] = all(torch.equal(a, b) for a, b in zip(outputs, reference))
        greedy_tps = acc["greedy"]["tokens"] / acc["greedy"]["seconds"]
        rows = {}
        for m in methods:
            tps = acc[m]["tokens"] / acc[m]["seconds"]
            row = {"tokens_per_s": tps, "speedup": tps / greedy_tps, "identical_to_greedy": acc[m]["identical"]}
            if acc[m]["stats"]:
                row.update(pool_acceptance(acc[m]["stats"]))
                row["ceiling"] = row["mean_accepted_length"] * t1 / tD
                row["fraction_of_ceiling"] = row["speedup"] / row["ceiling"]
            rows[m] = row
        results["batches"][str(batch_size)] = rows
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def print_table(results):
    print(f"t(1) = {results['t1_s'] * 1e3:.2f} ms, t(D+1) = {results['tD1_s'] * 1e3:.2f} ms "
          f"(ratio {results['tD1_s'] / results['t1_s']:.2f}), D = {results['num_depths']}")
    header = f"{'batch':>5} {'method':<20} {'tok/s':>8} {'speedup':>8} {'acc.len':>8} {'ceiling':>8} {'same':>5}  acceptance by position"
    print(header)
    for batch, rows in results["batches"].items():
        for m, r in rows.items():
            acc = " ".join(f"{a:.2f}" for a in r.get("acceptance_by_position", []))
            mal = f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else "-"
            ceil = f"{r['ceiling']:.2f}" if "ceiling" in r else "-"
            print(f"{batch:>5} {m:<20} {r['tokens_per_s']:>8.1f} {r['speedup']:>8.2f} {mal:>8} {ceil:>8} "
                  f"{str(r['identical_to_greedy']):>5}  {acc}")
