"""The item-level bootstrap against a known case: over many simulated data sets, a 90% CI of a mean over 50 items
must cover the true value in about 90% of them (the percentile bootstrap runs a little under nominal: about 0.88).
Across seeds the tables use other intervals: tests/experiments/test_interval_coverage.py."""

import numpy as np

from trl_mtp.bootstrap import bootstrap_ci


def test_mean_of_normal_draws():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(400):  # 50 draws of N(1, 2^2): the CI of their mean
        _, low, high = bootstrap_ci(rng.normal(1.0, 2.0, 50), n_resamples=2000, seed=i)
        hits += low <= 1.0 <= high
    assert 0.85 <= hits / 400 <= 0.95
