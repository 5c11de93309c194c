"""Evaluation on the embedded tasks: greedy exact-match accuracy, and held-out NLL on text.

Both take a plain Hugging Face causal LM (anything with `generate` and a `labels` loss). To evaluate the trunk
of an MTP wrapper, pass the wrapped HF model (e.g. `mtp_model.base_model`).
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trl_mtp.embedded.tasks.base import PromptTask, check_count


def left_padded_batches(model, tokenizer, texts: list[str], batch_size: int):
    """`texts` encoded in batches, left-padded (generation appends on the right), with `model` in eval mode; the
    tokenizer's padding side and the model's mode are restored when the iteration ends."""
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            yield tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    conversational: bool = False,
) -> list[str]:
    """Greedy completions of `prompts` (plain strings, or chat messages when `conversational`), batched with
    left padding, decoded without special tokens."""
    if conversational:
        prompts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    completions = []
    for enc in left_padded_batches(model, tokenizer, prompts, batch_size):
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        completions += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: PromptTask,
    n: int = 200,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    conversational: bool = False,
) -> dict:
    """Greedy exact-match accuracy of `model` on the first `n` eval examples of `task`.

    Returns {"task", "n", "accuracy", "correct": per-item 0/1 list (for bootstrap CIs), "samples": a few
    (prompt, completion, target) triples}. `max_new_tokens` defaults to the longest target plus 2 tokens.
    """
    check_count(n)
    data = task.eval(n, conversational=conversational)
    if len(data) == 0:
        return {"task": task.name, "n": 0, "accuracy": float("nan"), "correct": [], "samples": []}
    prompts, completions = list(data["prompt"]), list(data["completion"])  # datasets 5 returns lazy Columns
    targets = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets) + 2
    outputs = generate_completions(
        model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, conversational=conversational
    )
    correct = task.reward(prompts, outputs)
    shown = [p if isinstance(p, str) else p[-1]["content"] for p in prompts[:3]]
    return {
        "task": task.name,
        "n": len(correct),
        "accuracy": sum(correct) / len(correct),
        "correct": correct,
        "samples": list(zip(shown, outputs, targets)),
    }


@torch.no_grad()
def heldout_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int = 512,
    batch_size: int = 8,
) -> float:
    """Mean next-token negative log-likelihood (nats per token) of `model` over `texts` (each truncated to
    `max_length` tokens); exp() of it is the perplexity."""
    was_training = model.training
    model.eval()
    texts, total_nll, total_tokens = list(texts), 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=False,
            ).to(model.device)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
            labels = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels, reduction="sum", ignore_index=-100
            )
            total_nll += nll.item()
            total_tokens += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return total_nll / total_tokens if total_tokens else math.nan
