"""Decoding-side claims of the seed papers, reproduced at tiny scale.

    python -m trl_mtp.experiments.decoding_claims --out runs/decoding_claims            # ~15 min on one CPU core
    python -m trl_mtp.experiments.decoding_claims --out runs/decoding_claims --quick    # smoke run

Models: the decode benchmark's (`trl_mtp.benchmarks.decode_models.trained_models`: a tiny Llama pretrained on
standard-library code, heads trained with the base frozen on its own greedy continuations, cached), prompts:
held-out stdlib files (`decode.held_out_prompts`), greedy decoding, batch 1.

- Stern et al. 2018 (blockwise parallel decoding): blockwise heads with D = `--stern-depth` (8); decode with the
  first k heads for k = 0..D (window k+1; k = 0 is plain decoding through the same code) -> mean accepted block
  size and base forwards saved vs k; the output must be identical for every k (lossless).
- Gloeckle et al. 2024 (self-speculative decoding with n-token prediction): parallel heads, drafting with 1, 2 and
  4 heads, side by side in one run (repetitions interleaved so that machine load hits all alike) -> wall-clock
  speed-up over plain decoding and mean accepted length. The first k heads of a D = 4 set are a k-head set: with
  the base frozen and decoupled losses, each parallel head learns from its own depth's loss only.
- DeepSeek-V3 (one sequential MTP module): acceptance rate of the second token, `acceptance_by_position[0]` with
  a D = 1 sequential module, on held-out stdlib text; and on an embedded task, with the task model of the
  lookahead experiment (MTP-SFT, coupled, sequential heads, `--task-model`) drafting one token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trl_mtp.benchmarks.decode import held_out_prompts
from trl_mtp.benchmarks.decode_models import trained_models
from trl_mtp.decoding import pool_acceptance


def decode_all(model, prompts, max_new_tokens: int, pad: int, num_draft_tokens: int | None = None) -> dict:
    """Greedy decoding of each prompt alone (batch 1): summed forwards / tokens / seconds, the outputs, and the
    acceptance statistics pooled over every verify round (`decoding.pool_acceptance`)."""
    stats, outputs = [], []
    for prompt in prompts:
        out, st = model.speculative_generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, pad_token_id=pad, num_draft_tokens=num_draft_tokens
        )
        stats.append(st)
        outputs.append(out[0].tolist())
    return {
        "forwards": sum(st["forwards"] for st in stats),
        "tokens": sum(st["new_tokens"] for st in stats),
        "seconds": sum(st["wall_time_s"] for st in stats),
        "outputs": outputs,
        **pool_acceptance(stats),
    }


def stern(model, prompts, max_new_tokens: int, pad: int) -> list[dict]:
    """Mean accepted block size and forwards saved vs the number of heads drafting (k = 0..D)."""
    rows, reference = [], None
    for k in range(model.heads.num_depths + 1):
        r = decode_all(model, prompts, max_new_tokens, pad, num_draft_tokens=k)
        reference = reference or r
        rows.append(
            {
                "heads": k,
                "window": k + 1,
                "mean_accepted_block": r["mean_accepted_length"],
                "forwards": r["forwards"],
                "forwards_saved": 1 - r["forwards"] / reference["forwards"],
                "identical_to_k0": r["outputs"] == reference["outputs"],
            }
        )
    return rows


def gloeckle(model, prompts, max_new_tokens: int, pad: int, heads=(1, 2, 4), repeats: int = 3) -> list[dict]:
    """Wall-clock speed-up over plain decoding (k = 0, same code) per number of drafting heads, interleaved."""
    ks = [0, *heads]
    totals = {k: {"tokens": 0, "seconds": 0.0} for k in ks}
    last = {}
    for _ in range(repeats):
        for k in ks:
            r = decode_all(model, prompts, max_new_tokens, pad, num_draft_tokens=k)
            totals[k]["tokens"] += r["tokens"]
            totals[k]["seconds"] += r["seconds"]
            last[k] = r
    base_tps = totals[0]["tokens"] / totals[0]["seconds"]
    return [
        {
            "heads": k,
            "tokens_per_s": totals[k]["tokens"] / totals[k]["seconds"],
            "speedup": totals[k]["tokens"] / totals[k]["seconds"] / base_tps,
            "mean_accepted_length": last[k]["mean_accepted_length"],
            "acceptance_by_position": last[k]["acceptance_by_position"],
            "identical_to_k0": last[k]["outputs"] == last[0]["outputs"],
        }
        for k in ks
    ]


def second_token_acceptance_on_task(model_dir: Path, task_name: str, task_params: dict, n: int) -> dict:
    """DeepSeek's second-token acceptance on an embedded task: greedy answers to `n` eval prompts, one draft."""
    from transformers import AutoTokenizer

    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.model import MTPForCausalLM

    model = MTPForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tokenizer(p, add_special_tokens=False)["input_ids"]
        for p in get_task(task_name, **task_params).eval(n)["prompt"]
    ]
    r = decode_all(model, prompts, 32, tokenizer.pad_token_id, num_draft_tokens=1)
    return {
        "task": task_name,
        "prompts": n,
        "acceptance_second_token": r["acceptance_by_position"][0],
        "mean_accepted_length": r["mean_accepted_length"],
        "family": model.heads.head_type,
        "num_mtp_heads": model.heads.num_depths,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/decoding_claims")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stern-depth", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--task-model",
        default="runs/lookahead/task_model",
        help="an MTPForCausalLM trained on --task (skipped when missing)",
    )
    parser.add_argument("--task", default="copy")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM

    train = dict(pretrain_steps=30, head_steps=10, n_texts=64, verbose=False) if args.quick else {}
    if args.quick:
        args.prompts, args.max_new_tokens, args.repeats, args.stern_depth = 2, 16, 1, 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"config": vars(args)}
    start = time.time()
    dirs = {
        "stern": trained_models(families=("blockwise",), num_heads=args.stern_depth, **train)["blockwise"],
        "gloeckle": trained_models(families=("parallel",), num_heads=4, **train)["parallel"],
        "deepseek": trained_models(families=("sequential",), num_heads=1, **train)["sequential"],
        "deepseek_D4": trained_models(families=("sequential",), num_heads=4, **train)["sequential"],
    }
    results["model_dirs"] = {k: str(v) for k, v in dirs.items()}
    tokenizer = AutoTokenizer.from_pretrained(dirs["stern"])
    pad = tokenizer.pad_token_id
    prompts = held_out_prompts(tokenizer, args.prompts, args.prompt_tokens)
    load = lambda name: MTPForCausalLM.from_pretrained(dirs[name]).eval()  # noqa: E731
    results["stern"] = stern(load("stern"), prompts, args.max_new_tokens, pad)
    results["gloeckle"] = gloeckle(load("gloeckle"), prompts, args.max_new_tokens, pad, repeats=args.repeats)
    results["deepseek"] = {}
    for name in ("deepseek", "deepseek_D4"):
        r = decode_all(load(name), prompts, args.max_new_tokens, pad, num_draft_tokens=1)
        results["deepseek"][name] = {
            "acceptance_second_token": r["acceptance_by_position"][0],
            "mean_accepted_length": r["mean_accepted_length"],
        }
    if Path(args.task_model, "mtp_config.json").exists():
        results["deepseek"]["task"] = second_token_acceptance_on_task(Path(args.task_model), args.task, {}, 200)
    results["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
