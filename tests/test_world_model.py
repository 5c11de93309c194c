"""World-model parts (trl_mtp/world_model.py): the heads, the latent losses, gradient routing, batch repetition of a
layer's call kwargs. DreamerV3's maths is tested in tests/test_dreamer.py; the world model in PPO in
tests/trainers/test_wm_ppo.py."""

from __future__ import annotations

import torch

from trl_mtp.world_model import TwoHotHead, latent_distance, repeat_rows, scale_gradient, token_kl


def test_twohot_head_starts_at_zero_and_learns():
    torch.manual_seed(0)
    head = TwoHotHead(8, 255)
    x = torch.randn(16, 8)
    assert torch.equal(head(x), torch.zeros(16))  # zero-init output: uniform over the symmetric bins decodes to 0
    target = torch.full((16,), 3.0)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        head.loss(x, target).mean().backward()
        optimizer.step()
    assert torch.allclose(head(x), target, atol=0.05)


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


def test_repeat_rows_of_layer_kwargs():
    """Row b of every batch-first tensor becomes rows b * n .. b * n + n - 1 (as repeat_interleave lays out a batch);
    tensors without that batch axis (cache positions, broadcast masks) and non-tensors are kept."""
    mask = torch.arange(2 * 1 * 3 * 3).view(2, 1, 3, 3)
    cos, sin = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    kwargs = {
        "attention_mask": mask,
        "position_embeddings": (cos, sin),
        "cache_position": torch.arange(3),
        "shared_mask": torch.ones(1, 1, 3, 3),
        "use_cache": False,
        "past_key_values": None,
    }
    out = repeat_rows(kwargs, batch=2, times=3)
    assert out["attention_mask"].shape == (6, 1, 3, 3)
    assert torch.equal(out["attention_mask"][:3], mask[:1].expand(3, 1, 3, 3))
    assert torch.equal(out["attention_mask"][3:], mask[1:].expand(3, 1, 3, 3))
    assert isinstance(out["position_embeddings"], tuple) and torch.equal(out["position_embeddings"][1][4], sin[1])
    assert out["cache_position"] is kwargs["cache_position"] and out["shared_mask"] is kwargs["shared_mask"]
    assert out["use_cache"] is False and out["past_key_values"] is None
