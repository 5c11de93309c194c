"""Experiment: MTP-guided lookahead search vs plain sampling at equal forward budget, on an embedded task.

    trl-mtp experiment experiments/lookahead.yaml

Model (`task_model`): a tiny Llama (`pretrain_base(preset, "mix")`, cached) MTP-SFT'd on the task with sequential heads
(D = 3, coupled), cached in the trl-mtp cache. Held-out items: the task's eval split. Methods (`run_method`), per
item, value = the task's exact-match reward (an ORACLE verifier: it knows the answer):
- `greedy`, `sample` (one plain sample, temperature 1): no verifier, for reference;
- `best_of_n`: plain samples while they fit the budget, best by the verifier (stops at the first correct one);
  sample cost = forwards of lossless speculative sampling with the same heads (`speculative_cost`) or one per token;
- `lookahead`: `lookahead_search` with the verifier, same budget, stops at the first correct answer;
- `lookahead_noverifier`: the same search ranked by base log-probability only (no oracle), vs greedy.
Budgets are per item, in base row-forwards (see `trl_mtp.lookahead`).
"""

from __future__ import annotations

from trl_mtp.experiments import resumable
from trl_mtp.lookahead import best_of_n, lookahead_search

METHODS = ("greedy", "sample", "best_of_n", "lookahead", "lookahead_noverifier")


def task_model(task_name: str = "copy", steps: int = 300, preset: str = "tiny-llama", num_mtp_heads: int = 3):
    """The MTP-SFT'd model every method decodes with (cached by its arguments)."""
    from trl_mtp.experiments.sft_runs import cached_sft_model

    return cached_sft_model(
        "lookahead-model",
        preset=preset,
        tasks={task_name: {}},
        mtp={"head_type": "sequential", "num_mtp_heads": num_mtp_heads},
        steps=steps,
    )


@resumable
def run_method(
    model_dir,
    out_dir,
    *,
    method: str,
    seed: int,
    task_name: str = "copy",
    n: int = 100,
    max_forwards: int = 32,
    beam_width: int = 2,
    branches: int = 2,
    speculative_cost: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
) -> dict:
    """Exact match and base forwards per held-out item of one decoding `method` (samples seeded by seed and item;
    `temperature` is best-of-N's)."""
    import torch
    from transformers import AutoTokenizer

    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.model import MTPForCausalLM

    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose from {', '.join(METHODS)}")
    torch.set_num_threads(1)
    model = MTPForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task(task_name)
    common = dict(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens
    )
    correct, forwards = [], []
    for i, prompt in enumerate(task.eval(n)["prompt"]):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        texts = dict(prompt_text=prompt, tokenizer=tokenizer, seed=seed * 1_000_003 + i)
        if method == "greedy":
            result = lookahead_search(model, ids, beam_width=1, branches=1, max_forwards=10_000, **common)
        elif method == "sample":  # one plain sample: a value of -inf stops the draws after the first
            result = best_of_n(
                model,
                ids,
                task.reward,
                max_forwards=max_new_tokens + 1,
                speculative_cost=False,
                stop_value=float("-inf"),
                **texts,
                **common,
            )
        elif method == "best_of_n":
            result = best_of_n(
                model,
                ids,
                task.reward,
                max_forwards=max_forwards,
                speculative_cost=speculative_cost,
                temperature=temperature,
                stop_value=1.0,
                **texts,
                **common,
            )
        else:
            value = task.reward if method == "lookahead" else None
            result = lookahead_search(
                model,
                ids,
                value,
                beam_width=beam_width,
                branches=branches,
                max_forwards=max_forwards,
                stop_value=1.0 if value else None,
                **({"prompt_text": prompt, "tokenizer": tokenizer} if value else {}),
                **common,
            )
        correct.append(task.reward([prompt], [tokenizer.decode(result.completion, skip_special_tokens=True)])[0])
        forwards.append(result.stats["forwards"])
    return {
        "method": method,
        "seed": seed,
        "correct": correct,
        "forwards": forwards,
        "forwards_per_item": sum(forwards) / len(forwards),
    }
