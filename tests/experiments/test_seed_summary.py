"""t-intervals over seeds for the per-seed result files."""

import math

import pytest

from trl_mtp.experiments.seed_summary import t_interval


def test_t_interval_by_hand():
    got = t_interval([0.1, 0.2, 0.3])
    half = 2.920 * 0.1 / math.sqrt(3)  # a normal quantile (1.645) would give a far narrower interval
    assert got["mean"] == pytest.approx(0.2) and got["sd"] == pytest.approx(0.1)
    assert (got["low"], got["high"]) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-3)
    assert t_interval([0.5])["low"] is None
    with pytest.raises(ValueError):
        t_interval([])
    assert t_interval([0.5])["n"] == 1
