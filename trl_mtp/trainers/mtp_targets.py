"""What the heads learn from during RL: which samples count, and in coupled mode how hard the MTP loss may pull on
the policy's trunk.

Sample filter (`mtp_sample_filter`; NeMo-RL's `mtp_positive_only`):

    all                : every sampled completion token is a target of the heads
    positive_advantage : only the tokens of samples whose advantage is > 0

A sample's advantage is its own scalar where the trainer has one per sample (GRPO, RLOO) and the mean of its token
advantages over its real response tokens where it has one per token (PPO's whitened GAE).

Adaptive coefficient (`mtp_lambda_schedule="adaptive"`, coupled mode), in the spirit of OCC (Wang et al. 2026,
"Joint Training of Multi-Token Prediction in Reinforcement Learning via Optimal Coefficient Calibration"). OCC
writes the effect of the MTP term on the RL objective, per step, as a first-order correlation minus a second-order
penalty; with g_rl and g_mtp the gradients of the two losses, a weight lambda gains

    G(lambda) = lambda <g_rl, g_mtp> - lambda^2 ||g_mtp||^2 / 2,   maximised at   lambda* = <g_rl, g_mtp> / ||g_mtp||^2

(curvature taken as the identity). OCC estimates that ratio per token from log-probability differences and applies
it to a policy-gradient loss on the heads. Here the same ratio is measured exactly, on the gradients the two losses
send into the trunk through its last hidden state h (the one tensor through which the heads reach the policy), and
applied to the heads' own loss, capped by the configured lambda of the step:

    lambda = clip(<dL_rl/dh, dL_mtp/dh> / ||dL_mtp/dh||^2, 0, lambda_max)

An MTP gradient that points against the RL gradient gets 0 (the policy is left to RL alone, as in decoupled
mode); one that points along it gets at most the configured lambda. This is a rule in OCC's spirit, not a
reproduction of it.
"""

from __future__ import annotations

import torch

from trl_mtp.losses import IGNORE_INDEX

SAMPLE_FILTERS = ("all", "positive_advantage")


def sample_advantages(advantages: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B] advantage of each sample: `advantages` itself when [B]; the mean over `mask`'s tokens when [B, T]."""
    if advantages.dim() == 1:
        return advantages
    if mask is None:
        raise ValueError(f"advantages of shape {tuple(advantages.shape)}: per-token advantages need their mask")
    mask = mask.to(advantages.dtype)
    return (advantages * mask).sum(1) / mask.sum(1).clamp(min=1)


def filter_mtp_labels(
    labels: torch.Tensor, advantages: torch.Tensor, sample_filter: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """`labels` [B, L] of the heads with the rows that `sample_filter` leaves out set to ignored (-100).

    `advantages`: [B] per sample, or [B, T] per token with its `mask` [B, T] (see `sample_advantages`)."""
    if sample_filter == "all":
        return labels
    if sample_filter != "positive_advantage":
        raise ValueError(f"mtp_sample_filter={sample_filter!r}: choose one of {', '.join(SAMPLE_FILTERS)}")
    keep = sample_advantages(advantages, mask) > 0
    return labels.masked_fill(~keep.to(labels.device).unsqueeze(1), IGNORE_INDEX)


def adaptive_lambda(alignment: float, mtp_sq_norm: float, ceiling: float) -> float:
    """The adaptive MTP weight: clip(alignment / mtp_sq_norm, 0, ceiling), 0 when the MTP gradient is 0.

    `alignment` = <dL_rl/dh, dL_mtp/dh>, `mtp_sq_norm` = ||dL_mtp/dh||^2 (see the module's docstring)."""
    if mtp_sq_norm <= 0.0:
        return 0.0
    return min(max(alignment / mtp_sq_norm, 0.0), ceiling)


def trunk_gradients(
    policy_loss: torch.Tensor, mtp_loss: torch.Tensor, hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(<dL_rl/dh, dL_mtp/dh>, ||dL_mtp/dh||^2) on the trunk's hidden state `hidden` (graph attached), the graph kept
    for the backward that follows. A loss that does not reach `hidden` has a zero gradient there."""

    def grad_of(loss: torch.Tensor) -> torch.Tensor:
        if not loss.requires_grad:
            return torch.zeros_like(hidden)
        (grad,) = torch.autograd.grad(loss, hidden, retain_graph=True, allow_unused=True)
        return torch.zeros_like(hidden) if grad is None else grad

    g_rl, g_mtp = grad_of(policy_loss).float(), grad_of(mtp_loss).float()
    return (g_rl * g_mtp).sum(), (g_mtp * g_mtp).sum()
