"""DreamerV3's maths, one pure function per equation (plus the percentile normaliser's two EMAs).

DreamerV3 = Hafner et al. 2023, "Mastering Diverse Domains through World Models" (arXiv:2301.04104), and its released
code (github.com/danijar/dreamerv3). Lambda-returns: Sutton & Barto 2018, ch. 12. Each function names its equation;
`tests/test_dreamer.py` checks each against a hand-worked value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# == symlog and two-hot ==============================================================================================


def symlog(x: torch.Tensor) -> torch.Tensor:
    """symlog(x) = sign(x) ln(|x| + 1).  (DreamerV3, eq. 9)"""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """symexp(x) = sign(x) (exp(|x|) - 1), the inverse of symlog.  (DreamerV3, eq. 9)"""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(num_bins: int = 255, limit: float = 20.0) -> torch.Tensor:
    """B_k = symexp(linspace(-limit, limit, num_bins))_k: bins equally spaced in symlog space, held in raw space, and
    exactly symmetric (B_{K-1-k} = -B_k, B_{K//2} = 0), so a uniform softmax decodes to exactly 0.
    (DreamerV3's released code, `symexp_twohot` output; the paper's eq. 10 bins in symlog space)"""
    if num_bins < 3 or num_bins % 2 == 0:
        raise ValueError(f"num_bins={num_bins}: two-hot bins need an odd number >= 3 (symmetric, one at 0)")
    half = symexp(torch.linspace(0.0, limit, num_bins // 2 + 1))  # 0 .. symexp(limit)
    return torch.cat([-half[1:].flip(0), half])


def twohot_encode(y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """twohot(y)_i = |b_{k+1} - y| / |b_{k+1} - b_k| if i = k, |b_k - y| / |b_{k+1} - b_k| if i = k + 1, else 0,
    with k the bin just below y (y clamped to the bin range): [...] -> [..., num_bins]. Linear interpolation, so
    sum_i twohot(y)_i b_i = y exactly inside the range.  (DreamerV3, eq. 11)"""
    y = y.clamp(bins[0], bins[-1])
    k = (torch.bucketize(y, bins, right=True) - 1).clamp(0, len(bins) - 2)
    low, high = bins[k], bins[k + 1]
    w_high = ((y - low) / (high - low)).clamp(0, 1)
    out = torch.zeros(*y.shape, len(bins), dtype=y.dtype, device=y.device)
    out.scatter_(-1, k.unsqueeze(-1), (1 - w_high).unsqueeze(-1))
    out.scatter_add_(-1, (k + 1).unsqueeze(-1), w_high.unsqueeze(-1))
    return out


def twohot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """y_hat = sum_k softmax(logits)_k B_k, the expectation over the raw-space bins: [..., num_bins] -> [...].
    Summed symmetrically, sum_{k > K/2} B_k (p_k - p_{K-1-k}), so that equal mass on +-B_k cancels exactly (float32
    sums of +-4.9e8 do not).  (DreamerV3's released code, `TwoHot.pred`)
    Decoding symexp(sum_k p_k symlog(B_k)) instead, the paper's eq. 10 read literally, is biased: the loss-optimal
    prediction for returns 0 or 1 at even odds decodes to symexp(ln(2) / 2) = 0.414, not their mean 0.5."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    probs = F.softmax(logits, dim=-1)
    mid = bins.numel() // 2
    upper = probs[..., mid + 1 :] - probs[..., :mid].flip(-1)
    return upper @ bins[mid + 1 :].to(probs.dtype)


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """L = -twohot(y)^T log softmax(logits), per element: [..., num_bins], [...] -> [...]. Its minimiser over a set of
    targets is p = E[twohot(y)], which decodes to E[y].  (DreamerV3, eq. 11, on the raw-space bins)"""
    return -(twohot_encode(target.float(), bins) * F.log_softmax(logits.float(), dim=-1)).sum(-1)


# == lambda-returns, return normalisation, free bits =================================================================


def lambda_returns(
    rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """Bootstrapped lambda-returns of an imagined trajectory of H steps, right to left:
        R_H = v_H;   R_k = r_k + gamma c_k ((1 - lam) v_{k+1} + lam R_{k+1})
    `rewards`, `continues`: [N, H] (r_k, c_k of the transition from latent k to k + 1); `values`: [N, H + 1] (v_0 at the
    real start state, v_k = V(latent k)). Returns [N, H]: R_0..R_{H-1} (R_0 is the critic's target at the real state).
    (DreamerV3, eq. 7; TD(lambda), Sutton & Barto 2018, eq. 12.3)"""
    H = rewards.size(1)
    if values.size(1) != H + 1:
        raise ValueError(f"values need H + 1 = {H + 1} columns, got {values.size(1)}")
    returns = torch.zeros_like(rewards)
    next_return = values[:, H]
    for k in reversed(range(H)):
        next_return = rewards[:, k] + gamma * continues[:, k] * ((1 - lam) * values[:, k + 1] + lam * next_return)
        returns[:, k] = next_return
    return returns


class PercentileNormalizer(nn.Module):
    """S = EMA(P95(R)) - EMA(P5(R)) over batches of returns; advantages are divided by max(1, S) (large returns scaled
    down, small ones never scaled up), decay 0.99.  (DreamerV3, eq. 6-8, "return normalization")
    The EMAs start at 0, as in DreamerV3's `Moments`; state is in buffers, saved with the world model."""

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95, limit: float = 1.0):
        super().__init__()
        self.decay, self.q_low, self.q_high, self.limit = decay, low, high, limit
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> torch.Tensor:
        """Update the EMAs with the percentiles of `returns` (a flat tensor of real-token returns); the new scale."""
        x = returns.detach().float().flatten()
        self.low.mul_(self.decay).add_((1 - self.decay) * torch.quantile(x, self.q_low))
        self.high.mul_(self.decay).add_((1 - self.decay) * torch.quantile(x, self.q_high))
        return self.scale()

    def scale(self) -> torch.Tensor:
        """max(1, EMA(P95) - EMA(P5))."""
        return torch.clamp(self.high - self.low, min=self.limit)


def free_bits(kl: torch.Tensor, bits: float) -> torch.Tensor:
    """max(bits, KL): no gradient once a term is below `bits` nats, so it stops squeezing the latents.
    (DreamerV3, eq. 5; Kingma et al. 2016)"""
    return torch.clamp(kl, min=bits) if bits > 0 else kl


__all__ = [
    "PercentileNormalizer",
    "free_bits",
    "lambda_returns",
    "symexp",
    "symlog",
    "twohot_bins",
    "twohot_decode",
    "twohot_encode",
    "twohot_loss",
]
