"""World-model maths (trl_mtp/world_model.py): each equation against its definition or a hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trl_mtp.world_model import (
    PercentileNormalizer,
    TwoHotHead,
    free_bits,
    kl_balanced_loss,
    lambda_returns,
    latent_distance,
    scale_gradient,
    symexp,
    symlog,
    token_kl,
    twohot_bins,
    twohot_decode,
    twohot_encode,
    twohot_loss,
    unimix_log_probs,
)


def test_symlog_symexp_inverse():
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 42.0, 1e6], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-12, atol=1e-12)
    assert symlog(torch.tensor(0.0)) == 0 and torch.isclose(symlog(torch.tensor(np.e - 1)), torch.tensor(1.0))


def test_twohot_encode_decode_round_trip():
    bins = twohot_bins(255).double()
    y = torch.tensor([-1000.0, -3.7, -0.2, 0.0, 0.123, 1.0, 5.0, 77.0, 1e5], dtype=torch.float64)
    target = twohot_encode(symlog(y), bins)
    assert target.shape == (9, 255)
    assert torch.allclose(target.sum(-1), torch.ones(9, dtype=torch.float64))
    assert ((target > 0).sum(-1) <= 2).all()  # at most two neighbouring bins
    assert torch.allclose(target @ bins, symlog(y))  # the expectation in bin space is exact
    # decode(log of the two-hot) recovers y: softmax(log p) = p
    assert torch.allclose(twohot_decode(torch.log(target.clamp_min(1e-300)), bins), y, rtol=1e-9)
    # hand-worked: bins [-1, 0, 1], y = 0.25 -> weights 0.75 on 0 and 0.25 on 1
    small = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(twohot_encode(torch.tensor([0.25]), small), torch.tensor([[0.0, 0.75, 0.25]]))
    assert torch.allclose(twohot_encode(torch.tensor([5.0, -5.0]), small),
                          torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))  # clamped to the range


def test_twohot_head_starts_at_zero_and_learns():
    torch.manual_seed(0)
    head = TwoHotHead(8, 255)
    x = torch.randn(16, 8)
    assert torch.allclose(head(x), torch.zeros(16), atol=1e-6)  # zero-init output: uniform over symmetric bins
    target = torch.full((16,), 3.0)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        head.loss(x, target).mean().backward()
        optimizer.step()
    assert torch.allclose(head(x), target, atol=0.05)
    assert torch.allclose(twohot_loss(torch.zeros(3), torch.tensor(0.0), torch.tensor([-1.0, 0.0, 1.0])),
                          torch.tensor(np.log(3.0), dtype=torch.float32))


def test_lambda_returns_hand_worked():
    # H = 2, gamma = 0.9, lam = 0.5; r = [1, 2], c = [1, 0.5], v = [v0, v1, v2] = [0, 10, 20]
    # R_2 = v_2 = 20
    # R_1 = r_1 + g c_1 ((1 - l) v_2 + l R_2) = 2 + 0.9 * 0.5 * (10 + 10) = 11
    # R_0 = r_0 + g c_0 ((1 - l) v_1 + l R_1) = 1 + 0.9 * 1 * (5 + 5.5) = 10.45
    returns = lambda_returns(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 10.0, 20.0]]),
                             gamma=0.9, lam=0.5)
    assert torch.allclose(returns, torch.tensor([[10.45, 11.0]]))
    # lam = 1, c = 1: Monte-Carlo return plus the bootstrap; lam = 0: one-step TD targets
    r, c, v = torch.tensor([[1.0, 1.0, 1.0]]), torch.ones(1, 3), torch.tensor([[0.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(lambda_returns(r, c, v, 1.0, 1.0), torch.tensor([[7.0, 6.0, 5.0]]))
    assert torch.allclose(lambda_returns(r, c, v, 1.0, 0.0), torch.tensor([[3.0, 4.0, 5.0]]))
    # termination (c = 0) cuts everything after it
    assert torch.allclose(lambda_returns(r, torch.tensor([[1.0, 0.0, 1.0]]), v, 1.0, 1.0), torch.tensor([[2.0, 1.0, 5.0]]))
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


def test_kl_balancing_gradients():
    """dyn term moves only the prior, rep term only the posterior (DreamerV3 eq. 5)."""
    torch.manual_seed(0)
    post = torch.randn(4, 32, 32, requires_grad=True)
    prior = torch.randn(4, 32, 32, requires_grad=True)
    dyn_only, _ = kl_balanced_loss(post, prior, dyn=0.5, rep=0.0, free=0.0)
    dyn_only.sum().backward()
    assert post.grad is None or post.grad.abs().max() == 0
    assert prior.grad.abs().max() > 0
    post.grad, prior.grad = None, None
    rep_only, kl = kl_balanced_loss(post, prior, dyn=0.0, rep=0.1, free=0.0)
    rep_only.sum().backward()
    assert prior.grad is None or prior.grad.abs().max() == 0
    assert post.grad.abs().max() > 0
    assert not kl.requires_grad and (kl > 0).all()
    # both weights: the loss value is 0.6 KL (the two terms have the same value), free bits clamp it
    both, kl = kl_balanced_loss(post, prior, dyn=0.5, rep=0.1, free=0.0)
    assert torch.allclose(both, 0.6 * kl, rtol=1e-5)
    same = torch.zeros(1, 32, 32)
    clamped, _ = kl_balanced_loss(same, same, free=1.0)
    assert torch.allclose(clamped, torch.tensor([0.6]))


def test_unimix_keeps_every_class():
    logits = torch.tensor([[50.0, -50.0, -50.0, -50.0]])
    probs = unimix_log_probs(logits, 0.01).exp()
    assert torch.allclose(probs.sum(-1), torch.ones(1))
    assert torch.allclose(probs[0, 1:], torch.full((3,), 0.0025), atol=1e-6)


def test_latent_and_token_losses_stop_gradient_on_targets():
    pred = torch.randn(3, 5, 8, requires_grad=True)
    target = torch.randn(3, 5, 8, requires_grad=True)
    for kind in ("cosine", "mse"):
        latent_distance(pred, target, kind).sum().backward()
    assert target.grad is None and pred.grad is not None
    assert torch.allclose(latent_distance(target, target, "cosine"), torch.zeros(3, 5), atol=1e-6)
    real = torch.randn(3, 5, 11, requires_grad=True)
    guess = torch.randn(3, 5, 11, requires_grad=True)
    kl = token_kl(real, guess)
    assert (kl >= -1e-6).all() and torch.allclose(token_kl(guess, guess), torch.zeros(3, 5), atol=1e-6)
    kl.sum().backward()
    assert real.grad is None and guess.grad is not None


def test_scale_gradient():
    x = torch.ones(3, requires_grad=True)
    for scale, expected in ((0.0, None), (0.1, 0.1), (1.0, 1.0)):
        x.grad = None
        y = scale_gradient(x * 2, scale)
        assert torch.equal(y.detach(), torch.full((3,), 2.0))
        if expected is None:
            assert not y.requires_grad
        else:
            y.sum().backward()
            assert torch.allclose(x.grad, torch.full((3,), 2 * expected))
