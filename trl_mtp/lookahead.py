"""MTP-guided lookahead search: the heads propose branches, the base verifies them, a value picks the answer.

A first step towards "MCTS over continuations with the MTP heads as the proposal policy": a beam search
whose expansion is one round of self-speculative decoding per branch.

    expand   for every live node (a committed prefix) and each of its `branches` proposals: the branch token is the
             j-th most likely next token of the base (exact: the base's own distribution at the node), followed by
             the D tokens the MTP heads chain from it (sequential heads condition on the branch token; position-wise
             families propose the same tail for every branch)
    verify   ONE batched base forward over all candidates [prefix, b, d_1..d_D]: keep the longest draft prefix the
             base agrees with (greedy acceptance, as in `trl_mtp.decoding`), so a child is the prefix + b + k drafts,
             i.e. "branch at b, then the base's own greedy continuation", and its log-probability under the base
    score    children that end (EOS or max_new_tokens) are scored by `value_fn(prompts, completions) -> scores`
             (a TRL reward function works); live children are ranked by base log-probability (or by the value too,
             with `value_on_partial`, for a critic that scores prefixes) and the best `beam_width` are kept
    propose  from the same forward's hidden states, the heads propose the next branches of the kept children

The answer is the complete candidate with the highest value (ties: the higher base log-probability).

Budget accounting (per prompt), in the units of `speculative_generate`'s `forwards`: one base row-forward is one
sequence through the base with any number of new tokens over a KV cache (the prefill counts: it yields the first
distribution). A search with budget B never spends more than B row-forwards; an expansion is cut to the budget
left (branch-major: every live node's best branch first). This file recomputes each candidate without a KV cache
(simpler; the tiny models do not care); the accounting is that of a cached implementation, which is what the
speculative decoder does. Head work is counted separately (`head_calls`: depth evaluations, batched).

A task reward used as `value_fn` is an ORACLE verifier (it knows the answer): it is fair only against a baseline
that uses the same verifier, `best_of_n` below (plain sampling, best of the samples that fit in the same budget).

`beam_width=1, branches=1, value_fn=None` is greedy decoding (speculative, in 1 + rounds forwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trl_mtp.decoding import accept_greedy, left_pad
from trl_mtp.model import MTPForCausalLM


@dataclass
class Node:
    """A committed continuation of the prompt: its tokens, base log-probability, and what it proposes next."""

    tokens: list[int]
    logprob: float = 0.0
    done: bool = False
    value: float | None = None
    proposals: list[tuple[int, float, list[int]]] = field(default_factory=list)  # (branch token, its logprob, drafts)


@dataclass
class SearchResult:
    completion: list[int]  # token ids of the chosen continuation (EOS cut off)
    value: float | None
    logprob: float
    stats: dict


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class _Batch:
    """Left-padded rows through the base: logits, trunk hidden states and the last layer's kwargs (for the heads)."""

    def __init__(self, model, rows: list[list[int]], pad: int):
        self.ids, mask = left_pad(rows, pad, model.device)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        self.logits = model.base_model(
            input_ids=self.ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).logits.float()
        self.hidden = model.trunk.hidden
        self.layer_kwargs = model.trunk.layer_call_kwargs() if model.heads.uses_layer_kwargs else None


def _propose(model, batch: _Batch, last: torch.Tensor, branches: int, pad: int):
    """Per row r (ending at column last[r]): the `branches` most likely next tokens of the base and, for each, the
    D tokens the heads chain after it. -> (tokens [R, b], their logprobs [R, b], drafts [R, b, D], head calls).
    Columns after last[r] are scratch: the chain writes its tokens there (causal attention: column last[r] never
    sees them except as the inputs x_{t+i} a sequential head reads, which is exactly the chain)."""
    heads, D = model.heads, model.heads.num_depths
    rows = torch.arange(batch.ids.size(0), device=batch.ids.device)
    logprobs = torch.log_softmax(batch.logits[rows, last], dim=-1)
    top = logprobs.topk(branches, dim=-1)
    width = batch.ids.size(1)
    drafts = torch.zeros(len(rows), branches, D, dtype=torch.long, device=rows.device)
    for j in range(branches):
        scratch = torch.cat([batch.ids, batch.ids.new_full((len(rows), D + 1), pad)], dim=1)
        scratch[rows, last + 1] = top.indices[:, j]
        prev = batch.hidden
        for depth in range(1, D + 1):
            prev = heads.depth_hidden(
                depth,
                batch.hidden,
                prev_hidden=prev,
                tokens=scratch[:, depth : depth + width],
                layer_kwargs=batch.layer_kwargs,
            )
            token = heads.depth_logits(depth, prev[rows, last]).argmax(-1)
            scratch[rows, last + 1 + depth] = token
            drafts[:, j, depth - 1] = token
    return top.indices, top.values, drafts, branches * D


@torch.no_grad()
def lookahead_search(
    model: MTPForCausalLM,
    prompt_ids: list[int],
    value_fn=None,
    *,
    prompt_text: str | None = None,
    tokenizer=None,
    beam_width: int = 2,
    branches: int = 2,
    max_forwards: int = 64,
    max_new_tokens: int = 32,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    stop_value: float | None = None,
    value_on_partial: bool = False,
) -> SearchResult:
    """Search continuations of one prompt (token ids) with an `MTPForCausalLM`; see the module docstring.

    `value_fn(prompts, completions) -> list[float]` gets texts (`prompt_text` and completions decoded with
    `tokenizer`); None ranks by base log-probability alone. `stop_value`: stop as soon as a complete candidate
    scores at least this (an oracle verifier's 1.0), so `stats["forwards"]` is what the search needed."""
    for name, value in (
        ("beam_width", beam_width),
        ("branches", branches),
        ("max_forwards", max_forwards),
        ("max_new_tokens", max_new_tokens),
    ):
        _check_positive(name, value)
    if value_fn is not None and (tokenizer is None or prompt_text is None):
        raise ValueError("value_fn needs tokenizer and prompt_text to score texts")
    was_training = model.training
    model.eval()
    stats = {
        "forwards": 1,
        "base_calls": 1,
        "scored_tokens": len(prompt_ids),
        "head_calls": 0,
        "expansions": 0,
        "complete_candidates": 0,
    }

    def score(nodes: list[Node]) -> None:
        if value_fn is None or not nodes:
            return
        texts = tokenizer.batch_decode([n.tokens for n in nodes], skip_special_tokens=True)
        for node, value in zip(nodes, value_fn([prompt_text] * len(nodes), texts)):
            node.value = float(value)

    try:
        batch = _Batch(model, [list(prompt_ids)], pad_token_id)  # the prefill
        root = Node([])
        tokens, lps, drafts, calls = _propose(model, batch, torch.tensor([len(prompt_ids) - 1]), branches, pad_token_id)
        stats["head_calls"] += calls
        root.proposals = [(int(tokens[0, j]), float(lps[0, j]), drafts[0, j].tolist()) for j in range(branches)]
        beam, complete = [root], []
        D = model.heads.num_depths
        while beam and stats["forwards"] < max_forwards:
            # expand: branch-major, cut to the budget left
            budget = max_forwards - stats["forwards"]
            pairs = [
                (node, prop)
                for j in range(branches)
                for node in beam
                if j < len(node.proposals)
                for prop in [node.proposals[j]]
            ][:budget]
            rows = [list(prompt_ids) + node.tokens + [b] + d for node, (b, _, d) in pairs]
            batch = _Batch(model, rows, pad_token_id)  # verify: ONE base forward over every candidate
            stats["forwards"] += len(rows)
            stats["base_calls"] += 1
            stats["expansions"] += 1
            stats["scored_tokens"] += len(rows) * (D + 1)
            children, last = [], []
            start = batch.ids.size(1) - D - 1  # every row ends with its block [b, d_1..d_D]: right-aligned
            logprobs = torch.log_softmax(batch.logits[:, start:], dim=-1)  # [R, D+1, V]: p before d_1..d_D, after
            drafts = torch.tensor([d for _, (_, _, d) in pairs], device=logprobs.device).view(len(pairs), D)
            accepted, _ = accept_greedy(logprobs, drafts, sampler=None)  # the decoder's rule: longest agreeing prefix
            for r, (node, (b, lp_b, d)) in enumerate(pairs):
                k = int(accepted[r])
                block = [b] + d[:k]
                lp = node.logprob + lp_b + sum(float(logprobs[r, j, d[j]]) for j in range(k))
                cut = len(block)
                if eos_token_id is not None and eos_token_id in block:
                    cut = block.index(eos_token_id)  # the EOS itself is not part of the text
                room = max_new_tokens - len(node.tokens)
                child = Node(node.tokens + block[: min(cut, room)], lp)
                child.done = cut < len(block) or len(block) >= room
                children.append(child)
                last.append(start + k)
            done = [c for c in children if c.done]
            score(done)
            stats["complete_candidates"] += len(done)
            complete += done
            live = [(c, i) for i, c in enumerate(children) if not c.done]
            if value_on_partial:
                score([c for c, _ in live])
            key = (lambda ci: (ci[0].value, ci[0].logprob)) if value_on_partial else (lambda ci: ci[0].logprob)
            live = sorted(live, key=key, reverse=True)[:beam_width]
            if stop_value is not None and any(c.value is not None and c.value >= stop_value for c in done):
                break
            if live and stats["forwards"] < max_forwards:  # propose the next branches from this same forward
                tokens, lps, drafts, calls = _propose(
                    model, batch, torch.tensor(last, device=batch.ids.device), branches, pad_token_id
                )
                stats["head_calls"] += calls
                for c, i in live:
                    c.proposals = [
                        (int(tokens[i, j]), float(lps[i, j]), drafts[i, j].tolist()) for j in range(branches)
                    ]
            beam = [c for c, _ in live]
    finally:
        model.train(was_training)
        model.trunk.clear()
    pool = complete or beam  # budget spent before anything ended: the best partial continuation
    best = max(pool, key=lambda n: (n.value if n.value is not None else float("-inf"), n.logprob))
    stats["tokens"] = len(best.tokens)
    return SearchResult(best.tokens, best.value, best.logprob, stats)


@torch.no_grad()
def best_of_n(
    model: MTPForCausalLM,
    prompt_ids: list[int],
    value_fn,
    *,
    prompt_text: str,
    tokenizer,
    max_forwards: int,
    max_new_tokens: int = 32,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    temperature: float = 1.0,
    stop_value: float | None = None,
    seed: int = 0,
    speculative_cost: bool = True,
) -> SearchResult:
    """The baseline at equal budget: plain samples, drawn one after the other while they fit in `max_forwards`
    row-forwards, the best by `value_fn` (ties: the first). A sample's cost is its forwards: with
    `speculative_cost` those of lossless speculative sampling with the heads (same distribution, fewer forwards:
    the heads help the baseline as much as the search), else one per token as plain decoding spends.

    Samples are drawn in a batch for speed; the accounting is sequential (sample i counts only if samples 1..i fit).
    """
    _check_positive("max_forwards", max_forwards)
    n = max_forwards  # no sample costs less than one forward
    ids = torch.tensor([prompt_ids] * n, device=model.device)
    sequences, st = model.speculative_generate(
        ids,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,  # the full distribution at `temperature`, not generate's default top-50 cut
        eos_token_id=[] if eos_token_id is None else eos_token_id,  # None: no EOS (not the config's), as the search
        pad_token_id=pad_token_id,
        generator=torch.Generator().manual_seed(seed),
    )
    rounds = torch.tensor(st["accepted_per_round"]).view(-1, n) if st["accepted_per_round"] else torch.zeros(0, n)
    spec_cost = 1 + (rounds >= 0).sum(0)  # the prefill, then one forward per round the row took part in
    new = sequences[:, len(prompt_ids) :]
    ended = (new == eos_token_id) if eos_token_id is not None else torch.zeros_like(new, dtype=torch.bool)
    # a row without EOS ran to max_new_tokens (counting non-pad tokens would miss sampled pad ids)
    lengths = torch.where(ended.any(1), ended.float().argmax(1) + 1, max_new_tokens)
    costs = spec_cost if speculative_cost else lengths
    fits = int((costs.cumsum(0) <= max_forwards).sum())
    samples = [new[i, : lengths[i]].tolist() for i in range(fits)]
    samples = [s[:-1] if s and s[-1] == eos_token_id else s for s in samples]
    texts = tokenizer.batch_decode(samples, skip_special_tokens=True)
    values = [float(v) for v in value_fn([prompt_text] * len(texts), texts)] if texts else []
    used = fits
    if stop_value is not None:  # sequential draws stop at the first sample that reaches the target
        hit = [i for i, v in enumerate(values) if v >= stop_value]
        used = hit[0] + 1 if hit else fits
    best = max(range(used), key=lambda i: (values[i], -i), default=None)
    stats = {"forwards": int(costs[:used].sum()), "samples": used, "tokens": len(samples[best]) if used else 0}
    if best is None:
        return SearchResult([], None, float("nan"), stats)
    return SearchResult(samples[best], values[best], float("nan"), stats)
