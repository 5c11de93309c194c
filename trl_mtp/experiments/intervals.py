"""Confidence intervals over seeds that keep their coverage with few seeds (numpy only, vectorised).

A percentile bootstrap over 3 per-seed values covers the truth about 61% of the time at a nominal 90% (it cannot
know that 3 values underestimate their spread); resampling seeds then items does little better. The intervals here
use Student's t, which accounts for the spread being estimated from the same few seeds:

- `t_interval(values)`: one value per seed (a per-run metric, or the per-seed paired differences of two variants):
  mean +- t_{n-1} * s / sqrt(n). Exact for normal seed-to-seed variation.
- `seeds_items_interval(matrix)`: per-item values of several seeds on the same items (seeds x items; for a paired
  comparison, the per-item differences). Its target is the mean over the population of seeds AND items, so both
  spreads count. Two-way random-effects model x[s, i] = mu + a_s + b_i + e_si:
      Var(grand mean) = sigma_a^2 / n + sigma_b^2 / m + sigma_e^2 / (n m)
                      = Var(seed means) / n  +  (MS_items - MS_resid) / (n m)
  The first part is what a t-interval over the seed means sees; the second is the spread of the items every seed
  shares, which the seed means cannot see (floored at 0: a negative estimate means no item effect). Each part gets
  its own t quantile (n - 1 and m - 1 df) and they add in quadrature: exactly the t over seed means when items do
  not matter, the item-level interval when seeds do not, a little wide in between (Satterthwaite's pooled df
  undercovers there at 3 seeds: 0.87). One seed: only the item spread is known (t over items); the caller says so.

Coverage at 3, 5 and 10 seeds is simulated in tests/experiments/test_interval_coverage.py.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

METHOD = (
    "Student t over seeds: per-run metrics and their paired differences, t over the per-seed values; "
    "per-item metrics, t over the seed means widened by the spread of the shared items (two-way seeds x items "
    "random effects); one seed: items only, seed-to-seed spread unknown"
)
LARGE_DF = 1000.0  # above it t_quantile uses the Cornish-Fisher expansion (error about 1e-9 at the 95% point)


def _check_confidence(confidence: float):
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _incomplete_beta(a, b, x, iterations: int = 100):
    """The regularised incomplete beta function I_x(a, b), elementwise (continued fraction, Lentz's method)."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, x)))
    flip = x > (a + 1) / (a + b + 2)  # the continued fraction converges fast below this point; use the symmetry
    a, b, x = np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1 - x, x)
    lgamma = np.vectorize(math.lgamma, otypes=[float])
    with np.errstate(divide="ignore"):
        front = np.exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * np.log(x) + b * np.log1p(-x)) / a
    tiny = 1e-300

    def guard(v):
        return np.where(np.abs(v) < tiny, tiny, v)

    c, d = np.ones_like(x), 1 / guard(1 - (a + b) * x / (a + 1))
    h = d.copy()
    for k in range(1, iterations + 1):
        for numerator in (
            k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k)),
            -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1)),
        ):
            d = 1 / guard(1 + numerator * d)
            c = guard(1 + numerator / c)
            h = h * d * c
    result = front * h
    return np.where(flip, 1 - result, result)


def t_quantile(p: float, df):
    """The p-quantile (p > 0.5) of Student's t with `df` degrees of freedom (any real df > 0; array or scalar)."""
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p!r}")
    df = np.asarray(df, dtype=float)
    if np.any(~(df > 0)):
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    # P(T > t) = I_u(df/2, 1/2) / 2 with u = df / (df + t^2), increasing in u: bisect u in (0, 1)
    small = np.minimum(df, LARGE_DF)  # above LARGE_DF the continued fraction needs many terms
    low, high = np.zeros_like(df), np.ones_like(df)
    for _ in range(50):
        mid = (low + high) / 2
        above = _incomplete_beta(small / 2, 0.5, mid) / 2 > 1 - p  # tail too heavy: t larger, u smaller
        low, high = np.where(above, low, mid), np.where(above, mid, high)
    u = (low + high) / 2
    z = NormalDist().inv_cdf(p)
    expansion = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    t = np.where(df > LARGE_DF, expansion, np.sqrt(small * (1 - u) / u))
    return float(t) if t.ndim == 0 else t


def t_interval(values, *, confidence: float = 0.9) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the mean of per-seed `values` (Student t, n - 1 df); low = high = None with one value."""
    _check_confidence(confidence)
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence of numbers, got shape {x.shape}")
    if x.size == 1:
        return float(x[0]), None, None
    half = t_quantile((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def seeds_items_half_width(matrix: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Half-width of the two-way interval of seeds x items matrices (the last two axes; n >= 2 seeds, m >= 2
    items), vectorised over any leading axes (the coverage simulation passes thousands at once)."""
    n, m = matrix.shape[-2:]
    seed_means, item_means = matrix.mean(-1), matrix.mean(-2)
    ms_items = n * item_means.var(-1, ddof=1)
    resid = matrix - seed_means[..., :, None] - item_means[..., None, :] + matrix.mean((-2, -1))[..., None, None]
    ms_resid = (resid**2).sum((-2, -1)) / ((n - 1) * (m - 1))
    seed_part = seed_means.var(-1, ddof=1) / n  # = MS_seeds / (n m): what a t over the seed means sees
    item_part = np.maximum(ms_items - ms_resid, 0.0) / (n * m)  # sigma_b^2 / m, floored: no item effect
    p = (1 + confidence) / 2
    return np.sqrt(t_quantile(p, n - 1) ** 2 * seed_part + t_quantile(p, m - 1) ** 2 * item_part)


def seeds_items_interval(per_seed_items, *, confidence: float = 0.9) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the mean over seeds and items of per-item values, one list per seed, the same items in
    the same order for every seed (see the module docstring). One seed: a t-interval over its items."""
    _check_confidence(confidence)
    rows = [np.asarray(v, dtype=float) for v in per_seed_items]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise ValueError("per_seed_items must be a non-empty list of non-empty 1-D sequences of numbers")
    if len({r.size for r in rows}) > 1:
        raise ValueError(f"every seed must score the same items, got {sorted({r.size for r in rows})} items")
    if len(rows) == 1:
        return t_interval(rows[0], confidence=confidence)
    matrix = np.stack(rows)
    if matrix.shape[1] == 1:  # one item per seed: the seeds' values are all there is
        return t_interval(matrix[:, 0], confidence=confidence)
    mean, half = float(matrix.mean()), float(seeds_items_half_width(matrix, confidence))
    return mean, mean - half, mean + half
