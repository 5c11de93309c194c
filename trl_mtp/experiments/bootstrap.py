"""Bootstrap confidence intervals (numpy, vectorised): items; seeds then items (Gloeckle et al. 2024); paired.

All return (mean, low, high) of the percentile interval at `confidence` (default 90%).
"""

from __future__ import annotations

import numpy as np


def _interval(point: float, stats: np.ndarray, confidence: float) -> tuple[float, float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(point), float(low), float(high)


def _as_array(values, what: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    return array


def bootstrap_ci(values, *, n_resamples: int = 10000, confidence: float = 0.9,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean of per-item `values`, resampling items."""
    x = _as_array(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    return _interval(x.mean(), x[idx].mean(axis=1), confidence)


def bootstrap_ci_seeds(per_seed_values, *, n_resamples: int = 10000, confidence: float = 0.9,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) for runs with several seeds: each resample draws seeds with replacement, then items
    with replacement within each drawn seed; the statistic is the mean over drawn seeds of their item means.
    `per_seed_values` is a list (one per seed) of per-item lists, lengths may differ."""
    runs = [_as_array(v, "each seed's values") for v in per_seed_values]
    if not runs:
        raise ValueError("per_seed_values must hold at least one seed")
    rng = np.random.default_rng(seed)
    n_seeds = len(runs)
    # item-level resampled means for every (resample, seed), then pick seeds per resample
    item_means = np.stack([r[rng.integers(0, r.size, size=(n_resamples, r.size))].mean(axis=1) for r in runs], 1)
    seed_idx = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    stats = np.take_along_axis(item_means, seed_idx, axis=1).mean(axis=1)
    return _interval(np.mean([r.mean() for r in runs]), stats, confidence)


def bootstrap_diff_ci(values_a, values_b, *, n_resamples: int = 10000, confidence: float = 0.9,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of mean(a) - mean(b) for paired per-item values (the same items, same order), resampling
    items jointly so that the item difficulty cancels."""
    a, b = _as_array(values_a, "values_a"), _as_array(values_b, "values_b")
    if a.size != b.size:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    return bootstrap_ci(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed)
