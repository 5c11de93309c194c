"""The math of PPO for language models, as pure functions on [B, T] tensors (T = response positions).

Each function is one equation of TRL's former PPOTrainer, i.e. of "The N+ Implementation Details of RLHF with PPO"
(Huang et al. 2024, arXiv:2403.17031), written so that it can be checked by hand. `mask` is a bool [B, T] that is
True on real response tokens (up to and including the stop token) and False on padding.

Layout of one rollout row (queries left-padded, responses right-padded):

    [pad pad q0 q1 q2 | r0 r1 r2=stop pad pad]
                       ^ column C = context length; r_j is sampled from the logits at column C-1+j
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trl_mtp.losses import masked_mean

# -- masks and sequence indexing --------------------------------------------------------------------------------


def truncate_at_stop(responses: torch.Tensor, stop_token_id: int | None, pad_token_id: int) -> torch.Tensor:
    """Every token after the first `stop_token_id` becomes `pad_token_id` (the stop token itself is kept).
    (N+ details #23: "truncate the response after the first stop token")"""
    if stop_token_id is None:
        return responses
    is_stop = responses == stop_token_id
    after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0  # strictly after the first stop token
    return responses.masked_fill(after_stop, pad_token_id)


def response_mask(responses: torch.Tensor, stop_token_id: int | None) -> torch.Tensor:
    """True on the real tokens of each response: up to and including the first stop token (all of them without a
    stop token). Found from the stop token, never from the pad id, which a policy may well sample (the former
    implementation located the end of a response with `== pad_token_id`)."""
    if stop_token_id is None:
        return torch.ones_like(responses, dtype=torch.bool)
    is_stop = responses == stop_token_id
    return (is_stop.long().cumsum(1) - is_stop.long()) == 0


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B] column of the last True of each row of `mask`, whatever the padding side (left, right or both).
    A row without any True gets 0."""
    T = mask.size(1)
    columns = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), columns, torch.zeros_like(columns)).max(dim=1).values


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded row sees the same positions as an unpadded one."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


# -- statistics over masked tokens ------------------------------------------------------------------------------
# (masked_mean, shared with the world model's losses, is in trl_mtp/losses.py)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the True entries of `mask`, with Bessel's correction n / (n - 1) when `unbiased`."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; with `shift_mean=False` the mean is added back (scale only).
    Entries outside the mask are set to 0. (N+ details #21 "advantage whitening", #9 "reward whitening")"""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.masked_fill(~mask.bool(), 0.0)


# -- log-probabilities and entropy ------------------------------------------------------------------------------


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position, in float32: [B, T, V], [B, T] -> [B, T]."""
    logits = logits.float()
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum_v softmax(z)_v z_v per position: [B, T, V] -> [B, T]."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


# -- rewards -----------------------------------------------------------------------------------------------------


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi, with log r = log pi_ref - log pi:
    k1 = -log r (unbiased, can be negative); k3 = (r - 1) - log r (unbiased, always >= 0). (Schulman 2020,
    "Approximating KL divergence")"""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator={estimator!r}: choose 'k1' or 'k3'")


def apply_missing_eos_penalty(scores: torch.Tensor, contains_stop: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """scores - penalty for responses that never emitted the stop token (cut by the length limit).
    (N+ details #24: a fixed penalty for incomplete responses; checked against the stop token, not the EOS)"""
    if penalty is None:
        return scores
    return scores - penalty * (~contains_stop.bool()).to(scores.dtype)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -kl_coef * KL_t on every response token, plus the score on the last real token of the response.
    Returns (rewards, non_score_rewards), both 0 on padding. (N+ details #11: per-token KL penalty; the RM score is
    given at the end of the episode)"""
    non_score = (-kl_coef * kl).masked_fill(~mask, 0.0)
    rewards = non_score.clone()
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


# -- advantages --------------------------------------------------------------------------------------------------


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16), right to left:
        delta_t = r_t + gamma * V_{t+1} - V_t        (V past the last real token = 0: the episode ends there)
        A_t     = delta_t + gamma * lam * A_{t+1}
    Returns (advantages, returns = A + V), both 0 on padding."""
    rewards = rewards.masked_fill(~mask, 0.0)
    values = values.masked_fill(~mask, 0.0)
    T = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages.masked_fill(~mask, 0.0)
    return advantages, (advantages + values).masked_fill(~mask, 0.0)


# -- losses ------------------------------------------------------------------------------------------------------


def clipped_policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss:
        ratio = exp(log pi - log pi_old);  L = mean_t max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    Returns (loss, detached stats: clipfrac, approxkl = mean 0.5 (log ratio)^2, ratio = mean ratio)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    losses = -advantages * ratio
    losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(losses, losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((losses_clipped > losses).float(), mask),
            "approxkl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (N+ details #13; OpenAI baselines' PPO2):
        V_clip = V_old + clip(V - V_old, -eps_v, eps_v);  L = 0.5 * mean_t max((V - R)^2, (V_clip - R)^2)
    Returns (loss, detached stats: clipfrac)."""
    clipped = torch.clamp(new_values, old_values - cliprange_value, old_values + cliprange_value)
    losses = (new_values - returns) ** 2
    losses_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(losses, losses_clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((losses_clipped > losses).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over real tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns <= 0:
        return torch.tensor(float("nan"), device=values.device)
    return 1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns
