import numpy as np
import pytest

from trl_mtp.experiments.bootstrap import bootstrap_ci, bootstrap_ci_seeds, bootstrap_diff_ci


def test_ci_brackets_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.3, rng.random(5000) < 0.3
    mean, low, high = bootstrap_ci(small)
    assert low <= mean <= high and mean == pytest.approx(small.mean())
    _, low2, high2 = bootstrap_ci(large)
    assert high2 - low2 < (high - low) / 4
    assert low2 < 0.3 < high2


def test_ci_coverage_matches_normal_theory():
    """For a Bernoulli(0.5) mean over 400 items the 90% half-width is about 1.645 * 0.5 / 20 = 0.041."""
    values = np.r_[np.ones(200), np.zeros(200)]
    _, low, high = bootstrap_ci(values, n_resamples=20000)
    assert (high - low) / 2 == pytest.approx(0.041, abs=0.004)


def test_constant_and_reproducible():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0, 1, 1, 0, 1], seed=3) == bootstrap_ci([0, 1, 1, 0, 1], seed=3)
    assert bootstrap_ci([0, 1, 1, 0, 1], confidence=0.5)[2] <= bootstrap_ci([0, 1, 1, 0, 1], confidence=0.99)[2]


def test_seed_level_resampling_widens_with_seed_variance():
    rng = np.random.default_rng(1)
    # three seeds whose accuracies differ a lot: the seed-level CI must be wider than pooling the items
    runs = [(rng.random(300) < p).astype(float) for p in (0.2, 0.5, 0.8)]
    mean, low, high = bootstrap_ci_seeds(runs)
    assert mean == pytest.approx(np.mean([r.mean() for r in runs]))
    _, plow, phigh = bootstrap_ci(np.concatenate(runs))
    assert high - low > 3 * (phigh - plow)
    one = bootstrap_ci_seeds([runs[0]])  # one seed: the item-level interval
    assert one[0] == pytest.approx(runs[0].mean()) and one[1] < one[0] < one[2]
    assert bootstrap_ci_seeds([[1, 0, 1], [1, 1]])[0] == pytest.approx((2 / 3 + 1) / 2)  # unequal lengths


def test_paired_difference():
    rng = np.random.default_rng(2)
    a = (rng.random(500) < 0.6).astype(float)
    assert bootstrap_diff_ci(a, a) == (0.0, 0.0, 0.0)
    b = a.copy()
    b[:50] = 0  # b loses exactly the items a solved among the first 50
    diff, low, high = bootstrap_diff_ci(a, b)
    assert diff == pytest.approx(a[:50].sum() / 500) and 0 < low <= diff <= high
    # pairing removes item difficulty: narrower than treating the runs as independent
    _, ilow, ihigh = bootstrap_ci(a)
    assert high - low < ihigh - ilow


@pytest.mark.parametrize("call", [
    lambda: bootstrap_ci([]),
    lambda: bootstrap_ci([[1, 2]]),
    lambda: bootstrap_ci([1, 0], confidence=1.5),
    lambda: bootstrap_ci_seeds([]),
    lambda: bootstrap_diff_ci([1, 0], [1]),
])
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()
