"""The maths of PPO (trl_mtp.trainers.ppo_core) against hand-worked examples and reference formulas."""

from __future__ import annotations

import math

import pytest
import torch

from trl_mtp.trainers import ppo_core as core

T, F = True, False


# -- GAE and whitening ------------------------------------------------------------------------------------------
def test_gae_hand_worked():
    # gamma 1, lam 0.5, V = 0.5 everywhere, score 1 at the end:
    # t=2: delta = 1 + 0 - 0.5 = 0.5             A2 = 0.5
    # t=1: delta = 0 + 0.5 - 0.5 = 0             A1 = 0 + 0.5 * 0.5 = 0.25
    # t=0: delta = 0                             A0 = 0.5 * 0.25 = 0.125
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.tensor([[T, T, T]])
    advantages, returns = core.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.125, 0.25, 0.5]]))
    torch.testing.assert_close(returns, torch.tensor([[0.625, 0.75, 1.0]]))


def test_gae_discount_and_padding():
    # gamma 0.9, lam 1: A1 = r1 = 1, A0 = r0 + 0.9 * A1 = 1.9 (V = 0); the padded position is ignored entirely
    rewards = torch.tensor([[1.0, 1.0, 99.0]])
    values = torch.tensor([[0.0, 0.0, 7.0]])
    mask = torch.tensor([[T, T, F]])
    advantages, returns = core.gae_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.9, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.9, 1.0, 0.0]]))


def test_gae_lam_1_gamma_1_is_monte_carlo():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    _, returns = core.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, rewards.flip(1).cumsum(1).flip(1))  # reward-to-go


def test_whitening_hand_worked():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones_like(x, dtype=torch.bool)
    std = math.sqrt(5.0 / 3.0)  # unbiased variance of 1..4 is 5/3
    torch.testing.assert_close(core.masked_whiten(x, mask), (x - 2.5) / std)
    torch.testing.assert_close(core.masked_whiten(x, mask, shift_mean=False), (x - 2.5) / std + 2.5)
    # padding is left out of the statistics and zeroed: mean 1.5, unbiased var 0.5
    x = torch.tensor([[1.0, 2.0, 100.0]])
    out = core.masked_whiten(x, torch.tensor([[T, T, F]]))
    torch.testing.assert_close(out, torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]]), atol=1e-6, rtol=0)


# -- losses -------------------------------------------------------------------------------------------------------
def test_clipped_policy_loss_reference():
    # ratio 1.5 / 0.5 against advantages +1 / -1, eps 0.2:
    # (1.5, +1): max(-1.5, -1.2) = -1.2 clipped;  (1.5, -1): max(1.5, 1.2) = 1.5
    # (0.5, +1): max(-0.5, -0.8) = -0.5;          (0.5, -1): max(0.5, 0.8) = 0.8 clipped
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    old = torch.zeros(1, 4)
    loss, stats = core.clipped_policy_loss(ratios.log(), old, advantages, torch.ones(1, 4, dtype=torch.bool), 0.2)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(0.5))
    torch.testing.assert_close(stats["ratio"], torch.tensor(1.0))
    torch.testing.assert_close(stats["approxkl"], 0.5 * (ratios.log() ** 2).mean())


def test_clipped_policy_loss_ignores_padding_and_matches_formula():
    torch.manual_seed(0)
    new, old, adv = torch.randn(4, 6) * 0.3, torch.randn(4, 6) * 0.3, torch.randn(4, 6)
    mask = torch.rand(4, 6) > 0.3
    loss, _ = core.clipped_policy_loss(new, old, adv, mask, 0.2)
    ratio = (new - old).exp()
    expected = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))[mask].mean()
    torch.testing.assert_close(loss, expected)
    # gradient flows only through the unclipped branch: d/dnew of -A * ratio where it is the max
    new.requires_grad_(True)
    core.clipped_policy_loss(new, old, adv, mask, 0.2)[0].backward()
    assert (new.grad[~mask] == 0).all()


def test_clipped_value_loss_reference():
    # (new, old, return): (1, 0, 0) -> clipped 0.2: max(1, 0.04) = 1
    #                     (0.1, 0, 1) -> inside the range: 0.81, not clipped
    #                     (0.5, 0, 1) -> clipped 0.2: max(0.25, 0.64) = 0.64, clipped
    new = torch.tensor([[1.0, 0.1, 0.5]])
    old = torch.zeros(1, 3)
    returns = torch.tensor([[0.0, 1.0, 1.0]])
    loss, stats = core.clipped_value_loss(new, old, returns, torch.ones(1, 3, dtype=torch.bool), 0.2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1.0 + 0.81 + 0.64) / 3))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(1 / 3))


# -- KL and rewards ----------------------------------------------------------------------------------------------
def test_kl_estimators_formulas_and_unbiasedness():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(core.kl_estimate(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    log_r = ref - logp
    torch.testing.assert_close(core.kl_estimate(logp, ref, "k3"), log_r.exp() - 1 - log_r)
    # Monte-Carlo: both are unbiased estimators of KL(p || q) under samples from p; k3 is never negative
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    true_kl = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for estimator in ("k1", "k3"):
        estimate = core.kl_estimate(p.log()[samples], q.log()[samples], estimator)
        assert abs(estimate.mean() - true_kl) < 0.01, estimator
    assert (core.kl_estimate(p.log()[samples], q.log()[samples], "k3") >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        core.kl_estimate(logp, ref, "k2")


def test_truncation_and_mask_use_the_stop_token_not_the_pad():
    stop, pad = 9, 0
    responses = torch.tensor([[5, 9, 7, 9], [5, 0, 7, 8], [9, 1, 2, 3]])  # row 1 samples the pad id: still real
    torch.testing.assert_close(
        core.truncate_at_stop(responses, stop, pad), torch.tensor([[5, 9, 0, 0], [5, 0, 7, 8], [9, 0, 0, 0]])
    )
    assert core.response_mask(responses, stop).tolist() == [[T, T, F, F], [T, T, T, T], [T, F, F, F]]
    assert core.response_mask(responses, None).all()
    assert core.truncate_at_stop(responses, None, pad) is responses


def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 1.0, -0.5])
    contains_stop = torch.tensor([T, F, F])
    torch.testing.assert_close(
        core.apply_missing_eos_penalty(scores, contains_stop, 2.0), torch.tensor([1.0, -1.0, -2.5])
    )
    assert core.apply_missing_eos_penalty(scores, contains_stop, None) is scores


def test_last_token_index_any_padding_side():
    mask = torch.tensor([[T, T, F, F], [F, F, T, T], [F, T, T, F], [T, T, T, T]])
    assert core.last_token_index(mask).tolist() == [1, 3, 2, 3]
    ids = core.position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]]))
    assert ids.tolist() == [[0, 0, 0, 1, 2]]


def test_score_lands_on_the_last_real_token():
    scores = torch.tensor([2.0, 3.0])
    kl = torch.ones(2, 4)
    mask = torch.tensor([[T, T, F, F], [T, T, T, T]])
    rewards, non_score = core.per_token_rewards(scores, kl, mask, kl_coef=0.1)
    torch.testing.assert_close(non_score, torch.tensor([[-0.1, -0.1, 0, 0], [-0.1, -0.1, -0.1, -0.1]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 1.9, 0, 0], [-0.1, -0.1, -0.1, 2.9]]))


def test_entropy_and_logprobs():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(core.entropy_from_logits(logits)[0, 0], torch.tensor(math.log(4)))
    assert core.entropy_from_logits(logits)[0, 1] < 0.01
    torch.testing.assert_close(
        core.logprobs_of(logits, torch.tensor([[2, 0]])), torch.log_softmax(logits, -1)[0, [0, 1], [2, 0]].unsqueeze(0)
    )


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[T, T, T, F]])
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert core.explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
