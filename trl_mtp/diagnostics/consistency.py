"""World-model consistency: does head i predict the policy's OWN future, i steps ahead?

For a context c, head i (depth i, predicting token |c|+1+i... counted from the last context position t: token
t+1+i) gives a distribution q_i. The policy's own distribution over that token is the marginal

    p_i(x) = E_{a_1..a_i ~ pi(. | c)} [ pi(x | c, a_1..a_i) ],

estimated from N sampled rollouts of the policy (temperature T). Rao-Blackwellised: instead of counting the sampled
tokens at step i, average the policy's full next-token distribution at that step over the rollouts; unbiased, and
far less noisy than counts. Depth 0 is the main head itself (p_0 = q_0: KL 0, a sanity check of the estimator).

Per context and depth: KL(p_i || q_i), top-1 agreement (argmax p_i == argmax q_i), and, where ground truth exists
(task answers, real text), top-1 accuracy of the head and of the policy's marginal. Aggregated by depth (mean and a
90% bootstrap CI over contexts) and by (depth, position in the answer). Rollouts run through EOS (a stop token is
a token like any other here).

The latent part: the cosine between head i's latent at t and the trunk's real hidden state at t+i on ground-truth
sequences (the heads' imagined state vs the reached one), and, pluggable, any world model's prediction error by
depth: `world_model(mtp_model, input_ids, attention_mask) -> {depth: error}` (e.g. from `trl_mtp.world_model`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from transformers import GenerationConfig

from trl_mtp.bootstrap import bootstrap_ci
from trl_mtp.decoding import left_pad
from trl_mtp.diagnostics.predictions import evaluating, iter_depth_logits, predict_batch


def head_distributions(mtp_model, ids, mask, temperature: float) -> torch.Tensor:
    """[B, D+1, V] log-probabilities of every depth at the last position t of each left-padded context.

    Families that read the tokens x_{t+1..t+i} (sequential) cannot see them past the context: they are fed their own
    greedy drafts, as in greedy self-speculative decoding (x_{t+1} = argmax of the main head, x_{t+i+1} = argmax of
    depth i), so their q_i is conditional on that path."""
    D, t = mtp_model.heads.num_depths, ids.size(1) - 1
    needs_tokens = mtp_model.heads.head_type == "sequential"
    drafts = ids[:, :0]
    for step in range(D + 1 if needs_tokens else 1):
        full = torch.cat([ids, drafts], 1)
        full_mask = torch.cat([mask, torch.ones_like(drafts)], 1)
        position_ids = (full_mask.cumsum(1) - 1).clamp(min=0)
        with evaluating(mtp_model):
            out = [
                torch.log_softmax(logits[:, t].float() / temperature, -1)
                for _, logits, _ in iter_depth_logits(mtp_model, full, full_mask, position_ids)
            ]
        if step < D:  # the next draft comes from the depth that just saw all the drafts it needs
            drafts = torch.cat([drafts, out[step].argmax(-1, keepdim=True)], 1)
    mtp_model.trunk.clear()
    return torch.stack(out, 1)


def policy_marginals(base_model, ids, mask, steps: int, n_samples: int, temperature: float, pad: int) -> torch.Tensor:
    """[B, steps, V] log of the Rao-Blackwellised marginal of the policy's token at each step ahead."""
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=steps,
        min_new_tokens=steps,
        num_return_sequences=n_samples,
        pad_token_id=pad,
        eos_token_id=[],
        output_logits=True,
        return_dict_in_generate=True,
    )
    with evaluating(base_model):
        out = base_model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    B = ids.size(0)
    probs = [torch.softmax(step.float() / temperature, -1).view(B, n_samples, -1).mean(1) for step in out.logits]
    return torch.stack(probs, 1).clamp_min(1e-12).log()


def consistency_probe(
    mtp_model,
    contexts: list[list[int]],
    *,
    targets: list[list[int]] | None = None,
    positions: list[int] | None = None,
    n_samples: int = 64,
    temperature: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    sequences: list[list[int]] | None = None,
    world_model: Callable | None = None,
    beyond_targets: bool = False,
) -> dict:
    """Head distributions vs the policy's own future on `contexts` (token id lists).

    `targets[c]` (optional): the true next tokens after context c (at least D+1 of them, or fewer: missing depths
    have no accuracy). `positions[c]`: the position label of context c (e.g. its offset in the answer) for the
    by-position table. `sequences`: ground-truth sequences for the latent cosine and `world_model`. With `targets`,
    (context, depth) pairs whose future lies past the end of the targets (after EOS: no head was trained there, and
    the policy's continuation past its own stop token is noise) are left out unless `beyond_targets`.
    Returns a JSON-ready dict: `by_depth`, `by_position`, `latent`, `world_model`, `settings`."""
    model, D = mtp_model, mtp_model.heads.num_depths
    pad = model.trunk.pad_token_id
    torch.manual_seed(seed)
    rows = []  # one dict per (context, depth)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        ids, mask = left_pad(chunk, pad, model.device)
        q = head_distributions(model, ids, mask, temperature)  # [b, D+1, V]
        p = policy_marginals(model.base_model, ids, mask, D + 1, n_samples, temperature, pad)  # [b, D+1, V]
        kl = (p.exp() * (p - q)).sum(-1)  # [b, D+1]
        p_top, q_top = p.argmax(-1), q.argmax(-1)
        for b in range(len(chunk)):
            c = start + b
            for depth in range(D + 1):
                if targets is not None and depth >= len(targets[c]) and not beyond_targets:
                    continue
                row = {
                    "context": c,
                    "depth": depth,
                    "position": positions[c] if positions else 0,
                    "kl": kl[b, depth].item(),
                    "agree": float(p_top[b, depth] == q_top[b, depth]),
                    "p_entropy": -(p[b, depth].exp() * p[b, depth]).sum().item(),
                    "q_entropy": -(q[b, depth].exp() * q[b, depth]).sum().item(),
                }
                if targets is not None and depth < len(targets[c]):
                    y = targets[c][depth]
                    row["head_correct"] = float(q_top[b, depth] == y)
                    row["policy_correct"] = float(p_top[b, depth] == y)
                rows.append(row)
    result = {
        "by_depth": aggregate(rows, ["depth"]),
        "by_position": aggregate(rows, ["depth", "position"]),
        "settings": {
            "contexts": len(contexts),
            "n_samples": n_samples,
            "temperature": temperature,
            "num_depths": D,
            "head_type": model.mtp_config.head_type,
            "seed": seed,
        },
    }
    if sequences:
        ids, mask = left_pad(sequences, pad, model.device)
        labels = ids.masked_fill(mask == 0, -100)
        scored = predict_batch(model, ids, mask, labels, rows=1, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
        result["latent"] = [
            {
                "depth": s["depth"],
                "latent_cos": s.get("latent_cos"),
                "accuracy": s.get("accuracy"),
                "entropy": s.get("entropy"),
            }
            for s in scored.summaries
        ]
        if world_model is not None:
            with evaluating(model):
                errors = world_model(model, ids, mask)
            result["world_model"] = {str(k): float(v) for k, v in errors.items()}
    return result


METRICS = ("kl", "agree", "head_correct", "policy_correct", "p_entropy", "q_entropy")


def aggregate(rows: list[dict], keys: list[str]) -> list[dict]:
    """Mean of each metric per group of `keys`, with a 90% bootstrap CI over contexts (`<metric>_ci`)."""
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    out = []
    for key in sorted(groups):
        members = groups[key]
        entry = dict(zip(keys, key), n=len(members))
        for metric in METRICS:
            values = [r[metric] for r in members if metric in r and math.isfinite(r[metric])]
            if values:
                mean, low, high = bootstrap_ci(np.array(values), n_resamples=2000)
                entry[metric], entry[f"{metric}_ci"] = mean, [low, high]
        out.append(entry)
    return out


def task_contexts(task, tokenizer, n: int, max_positions: int = 8) -> dict:
    """Contexts for `consistency_probe` from a task's eval split: for a prompt task, prompt + answer[:j] for
    j = 0..min(len(answer), max_positions)-1, with the rest of the answer (+ EOS) as targets and j as position; for
    the text task, windows of the text cut at positions 8, 16, 24, ... (targets: the following tokens)."""
    contexts, targets, positions, sequences = [], [], [], []
    data = task.eval(n)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if "prompt" in data.column_names:
        for prompt, answer in zip(data["prompt"], data["completion"]):
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"] + eos
            sequences.append(p + a)
            for j in range(min(len(a), max_positions)):
                contexts.append(p + a[:j])
                targets.append(a[j:])
                positions.append(j)
    else:
        for text in data["text"]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: 8 * (max_positions + 1) + 8]
            sequences.append(ids[:128])
            for j in range(1, max_positions + 1):
                if 8 * j < len(ids):
                    contexts.append(ids[: 8 * j])
                    targets.append(ids[8 * j :])
                    positions.append(8 * j)
    return {"contexts": contexts, "targets": targets, "positions": positions, "sequences": sequences}
