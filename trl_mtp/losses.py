"""MTP losses: label shifting per depth, per-depth weights, and the one loss function used by both
`MTPForCausalLM.forward` and the trainers (`compute_mtp_loss`).

    coupled:    L_mtp = sum_i w_i CE(logits_i, y_{t+1+i})                    gradients reach the trunk
    decoupled:  same, with h, embeddings, final norm and LM head detached      only head parameters learn
                target "tokens": hard CE; "self_distill": soft CE vs softmax(main logits at t+i), detached
    w_i = beta^(i-1)  (divided by sum_j beta^(j-1) when normalised; beta = 1: DeepSeek's 1/D)

The returned loss has no lambda: trainers apply their lambda (schedule) and `MTPForCausalLM.forward` its constant.

Memory: the full-vocabulary logits of one chunk of positions exist at a time. Each (norm -> LM head -> loss)
chunk runs inside a non-reentrant `torch.utils.checkpoint`, so backward recomputes that chunk's logits instead of
keeping D of them: peak memory O(chunk * V + D * T * d), not O(D * T * V). Only positions with a valid label are
projected at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


@dataclass
class MTPLossOutput:
    """`loss`: sum_i w_i CE_i over the depths trained (no lambda; differentiable). Per depth, detached:
    `losses` (CE), `accuracies` (top-1 vs the data token), `entropies` (of the head's distribution, nats),
    `num_tokens` (valid label positions)."""

    loss: torch.Tensor
    losses: torch.Tensor
    accuracies: torch.Tensor
    entropies: torch.Tensor
    num_tokens: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the True entries of `mask` (over all of them, or along `dim`); 0 where none is True."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def depth_weights(num_depths: int, decay: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """w_i = decay^(i-1) for i = 1..num_depths, divided by their sum when `normalize`."""
    weights = decay ** torch.arange(num_depths, dtype=torch.float64)
    return (weights / weights.sum() if normalize else weights).float()


def same_sequence_mask(
    shape: torch.Size,
    offset: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """[B, T] bool: position t and position t+offset exist and lie in the same (unpadded, unpacked) sequence.

    Padding: no zero of `attention_mask` in [t, t+offset]. Packing (TRL's padding-free batches carry only
    `position_ids`): position_ids[t+offset] - position_ids[t] == offset, which fails across a reset."""
    B, T = shape
    valid = torch.zeros(B, T, dtype=torch.bool, device=device)
    if offset >= T:
        return valid
    valid[:, : T - offset] = True
    if attention_mask is not None:
        # count of padding positions up to each t; no padding in [t, t+offset] iff the counts agree and t is real
        pads = torch.cumsum((attention_mask == 0).long(), dim=1)
        window_ok = (pads[:, offset:] == pads[:, : T - offset]) & (attention_mask[:, : T - offset] != 0)
        valid[:, : T - offset] &= window_ok
    if position_ids is not None:
        position_ids = position_ids.expand(B, T)
        valid[:, : T - offset] &= (position_ids[:, offset:] - position_ids[:, : T - offset]) == offset
    return valid


def shift_labels(
    labels: torch.Tensor,
    depth: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Targets for depth `depth` (0 = main head): out[:, t] = labels[:, t+1+depth], or -100 where that token is
    past the end, padding, in another packed sequence, or itself -100 (completion-only masks shift with depth)."""
    offset = 1 + depth
    B, T = labels.shape
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, : max(T - offset, 0)] = labels[:, offset:]
    valid = same_sequence_mask(labels.shape, offset, attention_mask, position_ids, device=labels.device)
    return out.masked_fill(~valid, IGNORE_INDEX)


def _chunk_loss(logits_fn, hidden, labels, teacher_hidden, teacher_fn, topk, stats_out: list):
    """Sum of CE over a chunk of rows (float32). On its first call only, appends the detached
    [correct count, entropy sum] to `stats_out`: checkpoint's backward recompute skips that work."""
    logits = logits_fn(hidden).float()
    logprobs = F.log_softmax(logits, dim=-1)
    if teacher_hidden is None:
        loss_sum = F.nll_loss(logprobs, labels, reduction="sum")
    else:
        with torch.no_grad():
            teacher_logits = teacher_fn(teacher_hidden).float()
            if topk is not None and topk < teacher_logits.size(-1):
                top = teacher_logits.topk(topk, dim=-1)
                teacher_logits = torch.full_like(teacher_logits, float("-inf")).scatter(-1, top.indices, top.values)
            teacher_probs = F.softmax(teacher_logits, dim=-1)
        # soft CE: -sum_v p_teacher(v) log q(v); where() avoids 0 * -inf
        loss_sum = -torch.where(teacher_probs > 0, teacher_probs * logprobs, 0.0).sum()
    if not stats_out:
        with torch.no_grad():
            correct = (logits.argmax(-1) == labels).sum().float()
            entropy = -(logprobs.exp() * logprobs).sum()
            stats_out.append(torch.stack([correct, entropy]))
    return loss_sum


def chunked_head_loss(
    logits_fn,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int = 256,
    teacher_hidden: torch.Tensor | None = None,
    teacher_fn=None,
    topk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE summed over rows of `hidden` [N, d] against `labels` [N] (all valid), one checkpointed chunk at a time.

    `logits_fn` maps [n, d] -> [n, V]. With `teacher_hidden` [N, d] and `teacher_fn`, the target is the detached
    softmax of `teacher_fn(teacher_hidden)` (optionally top-k) instead of the labels.
    Returns (loss_sum, correct_count, entropy_sum); the last two detached."""
    n = hidden.size(0)
    step = chunk_size if chunk_size > 0 else max(n, 1)
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    stats = torch.zeros(2, device=hidden.device)
    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, n, step):
        chunk_stats: list = []
        args = (
            logits_fn,
            hidden[start : start + step],
            labels[start : start + step],
            None if teacher_hidden is None else teacher_hidden[start : start + step],
            teacher_fn,
            topk,
            chunk_stats,
        )
        chunk_loss = checkpoint(_chunk_loss, *args, use_reentrant=False) if use_checkpoint else _chunk_loss(*args)
        loss_sum = loss_sum + chunk_loss
        stats = stats + chunk_stats[0]
    return loss_sum, stats[0], stats[1]


def mtp_loss(
    heads,
    trunk_hidden: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    config,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    layer_kwargs: dict | None = None,
    num_depths: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> MTPLossOutput:
    """The weighted MTP loss sum_i w_i CE_i of `heads` (an `MTPHeads`) on the trunk's pre-norm hidden states.

    `labels` are unshifted, as for the main head (`labels[t]` is token t; -100 ignored); depth i at position t is
    scored on labels[t+1+i] within the same sequence. Each CE_i is a mean over its valid positions, or a sum divided
    by `num_items_in_batch` when given (the Trainer's gradient-accumulation normalisation). `num_depths` < D trains
    only the first depths (window curriculum); the weights are computed over the depths trained."""
    num_depths = num_depths or heads.num_depths
    if not 1 <= num_depths <= heads.num_depths:
        raise ValueError(f"num_depths={num_depths}: must be in 1..{heads.num_depths}")
    decoupled = config.mode == "decoupled"
    self_distill = decoupled and config.decoupled_target == "self_distill"
    if decoupled:
        trunk_hidden = trunk_hidden.detach()
    if heads.uses_layer_kwargs and layer_kwargs is None:
        layer_kwargs = heads.trunk.layer_call_kwargs()

    B, T, d = trunk_hidden.shape
    flat_trunk = trunk_hidden.reshape(B * T, d)
    weights = depth_weights(num_depths, config.mtp_depth_decay, config.mtp_normalize_depth_weights)
    total = trunk_hidden.new_zeros((), dtype=torch.float32)
    losses, accuracies, entropies, counts = [], [], [], []
    for depth, z in heads.iter_depth_hiddens(trunk_hidden, input_ids, layer_kwargs, num_depths):
        depth_labels = shift_labels(labels, depth, attention_mask, position_ids).reshape(-1)
        rows = (depth_labels != IGNORE_INDEX).nonzero().squeeze(-1)
        count = rows.numel()
        teacher = None
        if self_distill:
            # the policy's own next-token distribution at position t+depth (it predicts token t+1+depth)
            teacher = flat_trunk[rows + depth]  # same row: t+1+depth < T for every valid row
        loss_sum, correct, entropy_sum = chunked_head_loss(
            lambda x, depth=depth: heads.depth_logits(depth, x, frozen_base=decoupled),
            z.reshape(B * T, d)[rows],
            depth_labels[rows],
            chunk_size=config.mtp_loss_chunk_size,
            teacher_hidden=teacher,
            teacher_fn=lambda x: heads.trunk.logits(x, frozen=True),
            topk=config.self_distill_topk,
        )
        normalizer = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        total = total + weights[depth - 1].item() * loss_sum / normalizer
        losses.append(loss_sum.detach() / max(count, 1))
        accuracies.append(correct / max(count, 1))
        entropies.append(entropy_sum / max(count, 1))
        counts.append(count)
    return MTPLossOutput(
        loss=total,
        losses=torch.stack(losses),
        accuracies=torch.stack(accuracies),
        entropies=torch.stack(entropies),
        num_tokens=torch.tensor(counts, device=trunk_hidden.device),
    )
