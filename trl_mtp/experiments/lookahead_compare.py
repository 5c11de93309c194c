"""Experiment: MTP-guided lookahead search vs plain sampling at equal forward budget, on an embedded task.

    python -m trl_mtp.experiments.lookahead_compare --out runs/lookahead

Model: a tiny Llama (`pretrain_base(preset, "mix")`, cached) MTP-SFT'd on the task with sequential heads (D = 3,
coupled), cached in `OUT/task_model` (`run_sft` with `record_every`, which saves it). Held-out items: the task's
eval split. Methods, per item, value = the task's exact-match reward (an ORACLE verifier: it knows the answer):
- `greedy`, `sample` (one plain sample, temperature 1): no verifier, for reference;
- `best_of_n`: plain samples while they fit the budget, best by the verifier (stops at the first correct one);
  sample cost = forwards of lossless speculative sampling with the same heads (`spec`) or one per token (`plain`);
- `lookahead`: `lookahead_search` with the verifier, same budget, stops at the first correct answer;
- `lookahead_noverifier`: the same search ranked by base log-probability only (no oracle), vs greedy.
Reported: exact match with 90% bootstrap CIs over items, paired difference lookahead - best_of_n, base forwards
per item. Budgets are per item, in base row-forwards (see `trl_mtp.lookahead`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trl_mtp.experiments.bootstrap import bootstrap_ci, bootstrap_diff_ci
from trl_mtp.lookahead import best_of_n, lookahead_search


def task_model(out: Path, task: str, steps: int, preset: str = "tiny-llama") -> Path:
    from trl_mtp.experiments.sft_runs import run_sft
    from trl_mtp.pretrain import pretrain_base

    base = pretrain_base(preset, "mix", steps=600, seed=0)
    run_dir = out / "task_model"
    result = run_sft(base, run_dir, tasks={task: {}}, mtp={"head_type": "sequential", "num_mtp_heads": 3},
                     steps=steps, eval_n=200, record_every=steps)
    print(f"task model: greedy exact match {result['tasks'][task]['accuracy']:.3f} ({steps} steps)", flush=True)
    return run_dir


def evaluate(model_dir: Path, task_name: str, n: int, budgets, beam_width: int, branches: int) -> dict:
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM
    from trl_mtp.tasks.registry import get_task

    model = MTPForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task(task_name)
    data = task.eval(n)
    common = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=32)
    per_item: dict[str, list] = {}

    def record(name, prompt, result):
        correct = task.reward([prompt], [tokenizer.decode(result.completion, skip_special_tokens=True)])[0]
        per_item.setdefault(name, []).append((correct, result.stats["forwards"]))

    for i, prompt in enumerate(data["prompt"]):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        texts = dict(prompt_text=prompt, tokenizer=tokenizer)
        record("greedy", prompt, lookahead_search(model, ids, beam_width=1, branches=1, max_forwards=10_000,
                                                  **common))
        # one plain sample: any value stops the draws after the first (33 forwards fit one 32-token sample)
        record("sample", prompt, best_of_n(model, ids, task.reward, max_forwards=33, speculative_cost=False,
                                           stop_value=float("-inf"), seed=i, **texts, **common))
        for budget in budgets:
            for cost in ("spec", "plain"):
                record(f"best_of_n[{cost}] B={budget}", prompt, best_of_n(
                    model, ids, task.reward, max_forwards=budget, speculative_cost=cost == "spec", stop_value=1.0,
                    seed=i, **texts, **common))
            record(f"lookahead B={budget}", prompt, lookahead_search(
                model, ids, task.reward, beam_width=beam_width, branches=branches, max_forwards=budget,
                stop_value=1.0, **texts, **common))
            record(f"lookahead_noverifier B={budget}", prompt, lookahead_search(
                model, ids, None, beam_width=beam_width, branches=branches, max_forwards=budget, **common))
        if i % 25 == 0:
            print(f"item {i}: " + ", ".join(f"{k} {sum(c for c, _ in v) / len(v):.2f}" for k, v in per_item.items()),
                  flush=True)
    return per_item


def table(per_item: dict, budgets) -> str:
    lines = ["| method | exact match [90% CI] | forwards / item | diff vs best-of-N[spec] same B [90% CI] |",
             "| --- | --- | --- | --- |"]
    for name, rows in per_item.items():
        correct = [c for c, _ in rows]
        mean, low, high = bootstrap_ci(correct)
        forwards = sum(f for _, f in rows) / len(rows)
        diff = ""
        if name.startswith("lookahead"):
            ref = [c for c, _ in per_item[f"best_of_n[spec] {name.split()[-1]}"]]
            d, dl, dh = bootstrap_diff_ci(correct, ref)
            diff = f"{d:+.3f} [{dl:+.3f}, {dh:+.3f}]"
        lines.append(f"| {name} | {mean:.3f} [{low:.3f}, {high:.3f}] | {forwards:.1f} | {diff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/lookahead")
    parser.add_argument("--task", default="copy")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--budgets", default="16,32")
    parser.add_argument("--beam-width", type=int, default=2)
    parser.add_argument("--branches", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    budgets = [int(b) for b in args.budgets.split(",")]
    model_dir = task_model(out, args.task, args.steps)
    per_item = evaluate(model_dir, args.task, args.n, budgets, args.beam_width, args.branches)
    text = table(per_item, budgets)
    (out / "results.json").write_text(json.dumps({"config": vars(args), "per_item": per_item}, indent=1))
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
