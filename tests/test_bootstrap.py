import numpy as np
import pytest

from trl_mtp.bootstrap import bootstrap_ci


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


@pytest.mark.parametrize(
    "call",
    [
        lambda: bootstrap_ci([]),
        lambda: bootstrap_ci([[1, 2]]),
        lambda: bootstrap_ci([1, 0], confidence=1.5),
    ],
)
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()
