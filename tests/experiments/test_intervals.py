"""The intervals over seeds against hand-computed values (their coverage: test_interval_coverage.py)."""

import math

import numpy as np
import pytest

from trl_mtp.experiments.intervals import seeds_items_half_width, seeds_items_interval, t_interval, t_quantile

T95 = {1: 6.313752, 2: 2.919986, 3: 2.353363, 9: 1.833113, 30: 1.697261, 199: 1.652547, 1000: 1.646379}


@pytest.mark.parametrize("df", sorted(T95))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.95, df) == pytest.approx(T95[df], abs=2e-6)


@pytest.mark.parametrize("df", [1.0, 2.5, 7.3])
def test_t_quantile_integrates_to_p(df):
    """For any real df the density integrated up to the quantile gives p (trapezoid rule on a fine grid)."""
    q = t_quantile(0.9, df)
    x = np.linspace(0, q, 200001)
    density = (
        math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2))
        / math.sqrt(df * math.pi)
        * (1 + x**2 / df) ** (-(df + 1) / 2)
    )
    assert 0.5 + np.trapezoid(density, x) == pytest.approx(0.9, abs=1e-7)


def test_t_interval_by_hand():
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # s = 1: half-width t_{2, 0.95} / sqrt(3)
    assert (mean, high - mean) == pytest.approx((2.0, 2.919986 / math.sqrt(3)))
    assert mean - low == pytest.approx(high - mean)
    assert t_interval([0.4]) == (0.4, None, None)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_seeds_items_interval_by_hand():
    """2 seeds x 3 items: seed means 2/3, 1/3 (variance of their mean 1/36, t with 1 df); item means 1, 0, 1/2
    (MS_items = 1/2), residual mean square 1/6, so the shared items add (1/2 - 1/6) / 6 = 1/18 (t with 2 df)."""
    mean, low, high = seeds_items_interval([[1, 0, 1], [1, 0, 0]])
    assert mean == pytest.approx(0.5)
    assert high - mean == pytest.approx(math.sqrt((6.313752 / 6) ** 2 + 2.919986**2 / 18), rel=1e-6)
    assert mean - low == pytest.approx(high - mean)


def test_without_an_item_effect_it_is_the_t_over_seed_means():
    """Seed means 2/3 and 1, MS_items = MS_resid = 1/6: no item part, so exactly t over the two seed means."""
    assert seeds_items_interval([[1, 0, 1], [1, 1, 1]]) == pytest.approx(t_interval([2 / 3, 1.0]))


def test_items_shared_by_every_seed_widen_it():
    """Three seeds that solve exactly the same items: the seed means agree, yet the items' spread remains."""
    items = (np.arange(200) % 3 == 0).astype(float)
    mean, low, high = seeds_items_interval([items, items, items])
    assert t_interval([items.mean()] * 3)[1:] == (items.mean(), items.mean())
    assert high - mean == pytest.approx(t_quantile(0.95, 199) * items.std(ddof=1) / math.sqrt(200))


def test_one_seed_is_the_item_interval_and_vectorised_agrees():
    assert seeds_items_interval([[1, 0, 0, 1]]) == pytest.approx(t_interval([1, 0, 0, 1]))
    rng = np.random.default_rng(0)
    stack = rng.random((4, 3, 10))
    widths = seeds_items_half_width(stack)
    for matrix, width in zip(stack, widths):
        mean, _, high = seeds_items_interval(list(matrix))
        assert high - mean == pytest.approx(width)


@pytest.mark.parametrize(
    "call,bad",
    [
        (lambda: t_interval([]), "non-empty"),
        (lambda: t_interval([1, 2], confidence=1.0), "1.0"),
        (lambda: t_quantile(0.4, 3), "0.4"),
        (lambda: t_quantile(0.9, 0), "0"),
        (lambda: seeds_items_interval([[1, 0], [1, 0, 1]]), r"\[2, 3\]"),
        (lambda: seeds_items_interval([]), "non-empty"),
    ],
)
def test_bad_input_names_the_value(call, bad):
    with pytest.raises(ValueError, match=bad):
        call()
