"""DreamerV3's maths (trl_mtp/dreamer.py): each equation against its definition or a hand-worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trl_mtp.dreamer import (
    PercentileNormalizer,
    free_bits,
    lambda_returns,
    symexp,
    symlog,
    twohot_bins,
    twohot_decode,
    twohot_encode,
    twohot_loss,
)


def test_symlog_symexp_inverse():
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 42.0, 1e6], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-12, atol=1e-12)
    assert symlog(torch.tensor(0.0)) == 0 and torch.isclose(symlog(torch.tensor(np.e - 1)), torch.tensor(1.0))


def test_twohot_bins_hand_worked():
    e = math.e
    assert torch.allclose(twohot_bins(5, limit=2.0), torch.tensor([1 - e**2, 1 - e, 0.0, e - 1, e**2 - 1]))
    bins = twohot_bins(255)
    assert torch.equal(bins, -bins.flip(0)) and bins[127] == 0  # exactly symmetric, one bin at 0
    assert torch.allclose(symlog(bins), torch.linspace(-20, 20, 255), atol=1e-5)  # even spacing in symlog space
    with pytest.raises(ValueError, match="num_bins=4"):
        twohot_bins(4)


def test_twohot_encode_decode_round_trip():
    bins = twohot_bins(255).double()
    y = torch.tensor([-1000.0, -3.7, -0.2, 0.0, 0.123, 1.0, 5.0, 77.0, 1e5], dtype=torch.float64)
    target = twohot_encode(y, bins)
    assert target.shape == (9, 255)
    assert torch.allclose(target.sum(-1), torch.ones(9, dtype=torch.float64))
    assert ((target > 0).sum(-1) <= 2).all()  # at most two neighbouring bins
    assert torch.allclose(target @ bins, y)  # linear interpolation between raw-space bins: the expectation is exact
    # decode(log of the two-hot) recovers y: softmax(log p) = p
    assert torch.allclose(twohot_decode(torch.log(target.clamp_min(1e-300)), bins), y, rtol=1e-9)
    # hand-worked: bins [-1, 0, 1], y = 0.25 -> weights 0.75 on 0 and 0.25 on 1
    small = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(twohot_encode(torch.tensor([0.25]), small), torch.tensor([[0.0, 0.75, 0.25]]))
    assert torch.allclose(
        twohot_encode(torch.tensor([5.0, -5.0]), small), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    )  # clamped to the range


def test_twohot_decode_hand_worked_and_exactly_zero_when_uniform():
    # bins symexp([-2, -1, 0, 1, 2]); p = [0, 0, 0.5, 0.25, 0.25] -> 0.25 (e - 1) + 0.25 (e^2 - 1)
    p = torch.tensor([0.0, 0.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    expected = 0.25 * (math.e - 1) + 0.25 * (math.e**2 - 1)
    assert math.isclose(twohot_decode(p.log(), twohot_bins(5, 2.0).double()).item(), expected, rel_tol=1e-6)
    # a uniform softmax over bins reaching +-4.9e8 decodes to exactly 0 in float32 (a plain sum does not)
    bins = twohot_bins(255)
    assert twohot_decode(torch.zeros(3, 255), bins).abs().max() == 0
    assert (torch.full((255,), 1 / 255) * bins).sum() != 0  # what the symmetric sum avoids


def test_loss_optimal_twohot_prediction_decodes_to_the_mean():
    """Returns 0 or 1 at even odds: the softmax that minimises the mean two-hot CE decodes to their mean 0.5.
    The paper's eq. 10 read literally (bins and two-hot in symlog space, decode symexp of the expectation) gives
    symexp(ln(2) / 2) = sqrt(2) - 1 = 0.414 for the same minimiser."""
    bins, targets = twohot_bins(255), torch.tensor([0.0, 1.0])
    logits = torch.zeros(255, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        twohot_loss(logits.expand(2, -1), targets, bins).mean().backward()
        optimizer.step()
    assert abs(twohot_decode(logits.detach(), bins).item() - 0.5) < 0.01
    # the exact minimiser: p = the mean of the two-hot targets
    p = twohot_encode(targets, bins).mean(0)
    assert math.isclose(twohot_decode(p.clamp_min(1e-30).log(), bins).item(), 0.5, abs_tol=1e-6)
    # the biased decoder, on its own loss's minimiser
    symlog_bins = torch.linspace(-20.0, 20.0, 255)
    p_symlog = twohot_encode(symlog(targets), symlog_bins).mean(0)
    assert math.isclose(symexp(p_symlog @ symlog_bins).item(), math.sqrt(2) - 1, abs_tol=1e-5)


def test_twohot_loss_hand_worked():
    # bins [-1, 0, 1], uniform logits: CE = ln 3 whatever the target; target 0.25 with p = twohot(0.25): its entropy
    small = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(twohot_loss(torch.zeros(3), torch.tensor(0.0), small), torch.tensor(math.log(3.0)))
    p = torch.tensor([1e-30, 0.75, 0.25])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(twohot_loss(p.log(), torch.tensor(0.25), small).item(), entropy, rel_tol=1e-6)


def test_lambda_returns_hand_worked():
    # H = 2, gamma = 0.9, lam = 0.5; r = [1, 2], c = [1, 0.5], v = [v0, v1, v2] = [0, 10, 20]
    # R_2 = v_2 = 20
    # R_1 = r_1 + g c_1 ((1 - l) v_2 + l R_2) = 2 + 0.9 * 0.5 * (10 + 10) = 11
    # R_0 = r_0 + g c_0 ((1 - l) v_1 + l R_1) = 1 + 0.9 * 1 * (5 + 5.5) = 10.45
    returns = lambda_returns(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 10.0, 20.0]]), gamma=0.9, lam=0.5
    )
    assert torch.allclose(returns, torch.tensor([[10.45, 11.0]]))
    # lam = 1, c = 1: Monte-Carlo return plus the bootstrap; lam = 0: one-step TD targets
    r, c, v = torch.tensor([[1.0, 1.0, 1.0]]), torch.ones(1, 3), torch.tensor([[0.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(lambda_returns(r, c, v, 1.0, 1.0), torch.tensor([[7.0, 6.0, 5.0]]))
    assert torch.allclose(lambda_returns(r, c, v, 1.0, 0.0), torch.tensor([[3.0, 4.0, 5.0]]))
    # termination (c = 0) cuts everything after it
    assert torch.allclose(
        lambda_returns(r, torch.tensor([[1.0, 0.0, 1.0]]), v, 1.0, 1.0), torch.tensor([[2.0, 1.0, 5.0]])
    )
    with pytest.raises(ValueError):
        lambda_returns(r, c, v[:, :3])


def test_percentile_normalizer_against_numpy():
    rng = np.random.default_rng(0)
    norm = PercentileNormalizer(decay=0.99)
    low = high = 0.0
    for scale in (0.5, 3.0, 30.0, 300.0):
        x = rng.normal(0, scale, size=257)
        low = 0.99 * low + 0.01 * np.percentile(x, 5)
        high = 0.99 * high + 0.01 * np.percentile(x, 95)
        got = norm.update(torch.tensor(x, dtype=torch.float32))
        assert np.isclose(norm.low.item(), low, rtol=1e-4) and np.isclose(norm.high.item(), high, rtol=1e-4)
        assert np.isclose(got.item(), max(1.0, high - low), rtol=1e-4)
    assert norm.scale().item() > 1  # the last batches were wide: large returns are scaled down
    small = PercentileNormalizer(decay=0.0)
    assert small.update(torch.linspace(-0.1, 0.1, 50)).item() == 1.0  # small returns are never scaled up
    assert set(small.state_dict()) == {"low", "high"}  # saved with the world model


def test_free_bits_clamp():
    kl = torch.tensor([0.2, 0.9, 1.0, 1.5, 4.0], requires_grad=True)
    out = free_bits(kl, 1.0)
    assert torch.equal(out.detach(), torch.tensor([1.0, 1.0, 1.0, 1.5, 4.0]))
    out.sum().backward()
    assert torch.equal(kl.grad, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))  # no pressure below the free nats
    assert free_bits(kl, 0.0) is kl
