"""The per-depth statistics: accuracy, entropy histogram and calibration on hand-made distributions."""

from __future__ import annotations

import math

import torch

from trl_mtp.diagnostics.stats import CALIBRATION_BINS, ENTROPY_BINS, depth_summary, reliability


def test_depth_summary_on_known_distributions():
    V = 4
    # two confident right answers (p = 0.97), one uniform wrong-ish answer, one ignored position
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 0], [9.0, 0, 0, 0]])
    targets = torch.tensor([0, 1, 3, -100])
    s = depth_summary(logits, targets, V)
    assert s["n"] == 3
    p = math.exp(5) / (math.exp(5) + 3)
    assert math.isclose(s["accuracy"], 2 / 3, rel_tol=1e-6)  # uniform ties pick token 0: wrong
    assert math.isclose(s["nll"], (-2 * math.log(p) + math.log(4)) / 3, rel_tol=1e-5)
    assert len(s["entropy_hist"]) == ENTROPY_BINS and sum(s["entropy_hist"]) == 3
    assert s["entropy_hist"][-1] == 1  # the uniform one has the maximal entropy log V
    assert len(s["calibration"]["count"]) == CALIBRATION_BINS and sum(s["calibration"]["count"]) == 3
    # ECE = (|p - 1| * 2 + |0.25 - 0|) / 3
    assert math.isclose(s["ece"], (2 * (1 - p) + 0.25) / 3, rel_tol=1e-5)
    conf, acc, counts = reliability(s["calibration"])
    assert counts == [1.0, 2.0] and acc == [0.0, 1.0]


def test_depth_summary_with_nothing_to_predict():
    assert depth_summary(torch.zeros(2, 3), torch.tensor([-100, -100]), 3) == {"n": 0}
