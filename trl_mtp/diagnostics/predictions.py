"""What every head predicts on a fixed batch: one no-grad forward of the trunk, then the heads depth by depth.

Shared by the recorder (probe batch, RL rollouts) and the consistency probe. Depth 0 is the main LM head; depth i
at position t predicts token t+1+i. Only one depth's logits [B, T, V] exist at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trl_mtp.diagnostics.stats import depth_summary, topk
from trl_mtp.losses import shift_labels


@dataclass
class BatchPredictions:
    """Per-depth results on one batch. Arrays are [D+1, R, T, ...] over the first R rows (depth 0 = main head)."""

    summaries: list[dict]  # per depth: `depth_summary` plus `latent_cos` (depths >= 1)
    topk_ids: torch.Tensor  # [D+1, R, T, k]
    topk_probs: torch.Tensor  # [D+1, R, T, k]
    targets: torch.Tensor  # [D+1, R, T], -100 where there is nothing to predict
    target_probs: torch.Tensor  # [D+1, R, T], probability each depth gave its target (0 where none)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [H, T, T] of row 0


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """`module.eval()` and no grad inside; the previous training flag is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def iter_depth_logits(mtp_model, input_ids, attention_mask=None, position_ids=None):
    """Yield (depth, logits [B, T, V], pre-norm hidden [B, T, d]) for depth 0..D from one trunk forward."""
    out = mtp_model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    trunk_hidden = mtp_model.trunk.hidden
    yield 0, out.logits, trunk_hidden
    for depth, z in mtp_model.heads.iter_depth_hiddens(trunk_hidden, input_ids):
        yield depth, mtp_model.heads.depth_logits(depth, z), z


def latent_cosine(z: torch.Tensor, trunk_hidden: torch.Tensor, depth: int, targets: torch.Tensor) -> float:
    """Mean cosine between a head's latent at t and the trunk's own hidden state at t + depth (the state the head
    "imagines" vs the one the trunk reaches after reading the real tokens), over positions with a target."""
    T = z.size(1)
    if depth >= T:
        return float("nan")
    valid = targets[:, : T - depth] != -100
    cos = F.cosine_similarity(z[:, : T - depth].float(), trunk_hidden[:, depth:].float(), dim=-1)
    return cos[valid].mean().item() if valid.any() else float("nan")


def predict_batch(
    mtp_model, input_ids, attention_mask=None, labels=None, *, k: int = 5, rows: int = 2, position_ids=None
) -> BatchPredictions:
    """Per-depth predictions vs actual tokens on a batch (`labels` unshifted, -100 ignored; default: the input ids
    at real tokens). Summaries cover every row; top-k arrays keep the first `rows` rows."""
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
    vocab = mtp_model.config.get_text_config().vocab_size
    summaries, ids, probs, targets, target_probs = [], [], [], [], []
    trunk_hidden = None
    with evaluating(mtp_model):
        for depth, logits, hidden in iter_depth_logits(mtp_model, input_ids, attention_mask, position_ids):
            y = shift_labels(labels, depth, attention_mask, position_ids)
            summary = {"depth": depth, **depth_summary(logits.flatten(0, 1), y.flatten(), vocab)}
            if depth == 0:
                trunk_hidden = hidden
            else:
                summary["latent_cos"] = latent_cosine(hidden, trunk_hidden, depth, y)
            summaries.append(summary)
            head_rows = logits[:rows].float()
            top_ids, top_probs = topk(head_rows, k)
            ids.append(top_ids)
            probs.append(top_probs)
            y_rows = y[:rows]
            p = torch.softmax(head_rows, -1).gather(-1, y_rows.clamp(min=0)[..., None])[..., 0]
            targets.append(y_rows)
            target_probs.append(p.masked_fill(y_rows == -100, 0.0))
    mtp_model.trunk.clear()
    return BatchPredictions(
        summaries, torch.stack(ids), torch.stack(probs), torch.stack(targets), torch.stack(target_probs)
    )
