"""Tokens per round of tree drafts against chain drafts, greedy, batch 1: what a tree buys per base forward.

    python -m trl_mtp.diagnostics.tree_rounds --pretrain-task mix --head-steps 100 --head-texts 256

runs the cached `trl-mtp bench decode` models (`trained_models`: one base, one head set per family) over held-out
stdlib prompts, chain drafts (every head, one guess per depth) and each tree (`trl_mtp.tree_drafts.TreeDraft`), and
prints per family and method: tokens per verify round (accepted drafts + 1, the prefill excluded), the accepted
depth's distribution, nodes per round, seconds per call (median; at 1.1M parameters mostly Python, not the
algorithm) and whether every output equals the chain's (greedy: it must). `--temperature T` samples instead (top_k 50);
`--json PATH` also writes the figures, with the arguments, to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from trl_mtp.tree_drafts import TreeDraft

METHODS = {
    "chain": None,
    # top-k trees (also when sampling: sample_children=None)
    "tree-9": TreeDraft(size=9, sample_children=None),
    "tree-15": TreeDraft(size=15, sample_children=None),
    "lookup": TreeDraft(size=1, choices=(), lookup_ngram=3),  # prompt lookup alone, as a chain up to D deep
    "lookup-10": TreeDraft(size=1, choices=(), lookup_ngram=3, lookup_tokens=10),  # as transformers' (10 tokens)
    "hybrid-15": TreeDraft(size=15, lookup_ngram=3, sample_children=None),
    "hybrid-15-10": TreeDraft(size=15, lookup_ngram=3, lookup_tokens=10, sample_children=None),
    # children drawn from the heads' q when sampling (greedy decoding ignores `sample_children`: the top-k tree)
    "sampled-12": TreeDraft(size=12, sample_children=(3, 1, 1, 1)),
    "sampled-12-hybrid-10": TreeDraft(size=12, sample_children=(3, 1, 1, 1), lookup_ngram=3, lookup_tokens=10),
}


def round_figures(model, prompts: list[list[int]], max_new_tokens: int, tree, pad: int, temperature: float = 0.0):
    """Decodes of each prompt (batch 1; greedy, or sampling at `temperature` from a seeded generator) -> tokens per
    verify round, accepted depths, nodes per round, seconds per call, and the outputs. Sampling keeps top_k 50
    (transformers' default) explicitly, whatever the model's generation config says."""
    accepted, nodes, seconds, outputs = [], [], [], []
    sampling = dict(do_sample=True, temperature=temperature, top_k=50, generator=torch.Generator().manual_seed(0))
    for prompt in prompts:
        ids = torch.tensor([prompt])
        start = time.perf_counter()
        out, stats = model.speculative_generate(
            ids,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=[],
            tree=tree,
            **(sampling if temperature else dict(do_sample=False)),
        )
        seconds.append(time.perf_counter() - start)
        accepted += [k for (k,) in stats["accepted_per_round"]]
        nodes += stats["draft_tokens_per_round"]
        outputs.append(out[0].tolist())
    return {
        "tokens_per_round": 1 + sum(accepted) / len(accepted),
        "accepted_depth": dict(sorted(Counter(accepted).items())),
        "nodes_per_round": sum(nodes) / len(nodes),
        "seconds_per_call": statistics.median(seconds),
        "outputs": outputs,
    }


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from trl_mtp.benchmarks.decode import held_out_prompts
    from trl_mtp.benchmarks.decode_models import trained_models
    from trl_mtp.model import MTPForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["blockwise", "medusa", "parallel"])
    parser.add_argument("--pretrain-task", default="stdlib")
    parser.add_argument("--head-steps", type=int, default=300)
    parser.add_argument("--head-texts", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sampling (top_k 50)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", type=Path, help="also write the figures (and these arguments) to this file")
    args = parser.parse_args(argv)
    report = {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "figures": {}}
    models = trained_models(
        families=args.families,
        pretrain_task=args.pretrain_task,
        head_steps=args.head_steps,
        n_texts=args.head_texts,
        verbose=False,
    )
    print("| family | method | tokens per round | accepted depth (rounds) | nodes per round | s per call | same |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for family, path in models.items():
        model = MTPForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompts = held_out_prompts(tokenizer, args.prompts, args.prompt_tokens)
        figures = {
            name: round_figures(model, prompts, args.max_new_tokens, tree, tokenizer.pad_token_id, args.temperature)
            for name, tree in METHODS.items()
            if name in args.methods or name == "chain"
        }
        report["figures"][family] = {
            name: {k: v for k, v in f.items() if k != "outputs"} for name, f in figures.items()
        }
        for name, f in figures.items():
            print(
                f"| {family} | {name} | {f['tokens_per_round']:.2f} | {f['accepted_depth']} | "
                f"{f['nodes_per_round']:.1f} | {f['seconds_per_call']:.3f} | "
                f"{'-' if args.temperature else 'yes' if f['outputs'] == figures['chain']['outputs'] else 'NO'} |"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
