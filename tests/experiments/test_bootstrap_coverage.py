"""The bootstrap against known cases: over many simulated data sets, a 90% CI must cover the true value in about
90% of them (the percentile bootstrap runs a little under nominal at these sizes: about 0.88)."""

import numpy as np

from trl_mtp.experiments.bootstrap import bootstrap_ci, bootstrap_ci_seeds, bootstrap_diff_ci


def coverage(make_ci, n_sets: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n_sets):
        truth, (_, low, high) = make_ci(rng, i)
        hits += low <= truth <= high
    return hits / n_sets


def test_mean_of_normal_draws():
    def ci(rng, i):  # 50 draws of N(1, 2^2): the CI of their mean
        return 1.0, bootstrap_ci(rng.normal(1.0, 2.0, 50), n_resamples=2000, seed=i)

    assert 0.85 <= coverage(ci, 400, seed=0) <= 0.95


def test_paired_difference_with_item_difficulty():
    def ci(rng, i):  # 60 items of varied difficulty, scored by two systems whose true means differ by 0.3
        difficulty = rng.normal(0.0, 2.0, 60)
        a, b = difficulty + rng.normal(0.3, 1.0, 60), difficulty + rng.normal(0.0, 1.0, 60)
        return 0.3, bootstrap_diff_ci(a, b, n_resamples=2000, seed=i)

    assert 0.85 <= coverage(ci, 400, seed=1) <= 0.95


def test_seeds_then_items_covers_where_pooling_items_does_not():
    """10 seeds x 20 items, each seed with its own offset N(0, 1) (items N(seed mean, 1)): resampling seeds then
    items covers the true mean at about the nominal rate; pooling the items ignores the seed-to-seed spread and
    covers it in well under half of the data sets."""
    def data(rng):
        return [rng.normal(1.0 + rng.normal(0.0, 1.0), 1.0, 20) for _ in range(10)]

    seeds = coverage(lambda rng, i: (1.0, bootstrap_ci_seeds(data(rng), n_resamples=1000, seed=i)), 300, seed=2)
    pooled = coverage(lambda rng, i: (1.0, bootstrap_ci(np.concatenate(data(rng)), n_resamples=1000, seed=i)), 300,
                      seed=2)
    assert 0.83 <= seeds <= 0.95
    assert pooled < 0.6
