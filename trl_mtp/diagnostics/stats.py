"""Per-depth statistics of predicted distributions: accuracy, entropy histogram, calibration (reliability bins, ECE).

Everything here is a pure function of tensors, shared by the recorder (training-time snapshots) and the consistency
probe, so the same numbers mean the same thing everywhere. Depth 0 is the main LM head (token t+1), depth i >= 1 the
MTP head i (token t+1+i), the project's convention.
"""

from __future__ import annotations

import math

import torch

CALIBRATION_BINS = 10  # equal-width bins of top-1 confidence in [0, 1]
ENTROPY_BINS = 20  # equal-width bins of entropy (nats) in [0, log V]


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the distributions whose log-probabilities are on the last axis."""
    return -(logprobs.exp() * logprobs).sum(-1)


def depth_summary(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> dict:
    """Statistics of one depth's predictions at the positions where `targets` != -100.

    `logits` [N, V], `targets` [N]. Returns JSON-ready numbers: `n`, `accuracy` (top-1), `nll`, `entropy` (mean),
    `entropy_hist` (counts over ENTROPY_BINS bins of [0, log V]), `calibration` (per confidence bin: `count`,
    `confidence` sum, `correct` sum) and `ece` (expected calibration error, count-weighted |acc - conf|)."""
    valid = targets != -100
    logprobs = torch.log_softmax(logits[valid].float(), dim=-1)
    y = targets[valid]
    n = int(y.numel())
    if n == 0:
        return {"n": 0}
    ent = entropy(logprobs)
    confidence, top1 = logprobs.exp().max(-1)
    correct = (top1 == y).float()
    max_entropy = math.log(vocab_size)
    hist = torch.histc(ent.clamp(0, max_entropy), bins=ENTROPY_BINS, min=0.0, max=max_entropy)
    bins = (confidence * CALIBRATION_BINS).long().clamp(max=CALIBRATION_BINS - 1)
    count = torch.bincount(bins, minlength=CALIBRATION_BINS).float()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=CALIBRATION_BINS)
    correct_sum = torch.bincount(bins, weights=correct, minlength=CALIBRATION_BINS)
    return {
        "n": n,
        "accuracy": correct.mean().item(),
        "nll": -logprobs.gather(-1, y[:, None]).mean().item(),
        "entropy": ent.mean().item(),
        "entropy_hist": hist.tolist(),
        "entropy_max": max_entropy,
        "calibration": {"count": count.tolist(), "confidence": conf_sum.tolist(), "correct": correct_sum.tolist()},
        "ece": ((conf_sum - correct_sum).abs().sum() / n).item(),
    }


def topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, probabilities) of the k most likely tokens, [..., k] each."""
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids, probs


def reliability(calibration: dict) -> tuple[list[float], list[float], list[float]]:
    """(mean confidence, accuracy, count) per non-empty calibration bin, for a reliability diagram."""
    conf, acc, counts = [], [], []
    for c, s, r in zip(calibration["count"], calibration["confidence"], calibration["correct"]):
        if c > 0:
            conf.append(s / c)
            acc.append(r / c)
            counts.append(c)
    return conf, acc, counts
