"""The loss equals a naive full-logits reference; masks shift with depth and never cross boundaries."""

import pytest
import torch
import torch.nn.functional as F
from native_models import tiny_base

from trl_mtp import MTPConfig, MTPForCausalLM
from trl_mtp.config import HEAD_TYPES
from trl_mtp.losses import depth_weights, shift_labels

V = 97


def naive_target(labels, b, t, offset, attention_mask, position_ids):
    """labels[b, t+offset] if it is a real token of the same sequence, else -100: written as plainly as possible."""
    T = labels.size(1)
    if t + offset >= T:
        return -100
    if attention_mask is not None and not all(attention_mask[b, s] == 1 for s in range(t, t + offset + 1)):
        return -100
    if position_ids is not None and int(position_ids[b, t + offset] - position_ids[b, t]) != offset:
        return -100
    return int(labels[b, t + offset])


def naive_targets(labels, offset, attention_mask=None, position_ids=None):
    B, T = labels.shape
    return torch.tensor(
        [[naive_target(labels, b, t, offset, attention_mask, position_ids) for t in range(T)] for b in range(B)]
    )


def batch_with_masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :4] = -100  # completion-only: prompt masked
    return ids, mask, labels


def test_shift_labels_matches_naive():
    ids, mask, labels = batch_with_masks()
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]] * 3)
    for depth in range(4):
        for m, p in [(None, None), (mask, None), (None, pos), (mask, pos)]:
            assert torch.equal(shift_labels(labels, depth, m, p), naive_targets(labels, 1 + depth, m, p))


def test_depth_weights():
    assert torch.allclose(depth_weights(4), torch.full((4,), 0.25))
    assert torch.allclose(depth_weights(3, 0.5, normalize=False), torch.tensor([1.0, 0.5, 0.25]))


def naive_mtp_loss(model, ids, labels, mask=None, pos=None):
    """Full [D, B, T, V] logits, plain CE per depth, weights by hand."""
    with torch.no_grad():
        all_logits = model.mtp_logits(ids, mask, pos)
    cfg, D = model.mtp_config, model.mtp_config.num_mtp_heads
    weights = [cfg.mtp_depth_decay**i for i in range(D)]
    weights = [w / sum(weights) for w in weights] if cfg.mtp_normalize_depth_weights else weights
    losses = [
        F.cross_entropy(
            all_logits[i].flatten(0, 1), naive_targets(labels, 2 + i, mask, pos).flatten(), ignore_index=-100
        )
        for i in range(D)
    ]
    return sum(w * loss for w, loss in zip(weights, losses)), torch.stack(losses)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
@pytest.mark.parametrize("packed", [False, True])
def test_loss_equals_naive_reference(head_type, packed):
    torch.manual_seed(0)
    config = MTPConfig(
        head_type=head_type,
        num_mtp_heads=3,
        mtp_loss_chunk_size=5,
        mtp_depth_decay=0.7,
        mtp_normalize_depth_weights=False,
    )
    model = MTPForCausalLM.from_base(tiny_base("llama", V), config)
    for p in model.heads.parameters():  # leave the zero init so every depth differs
        p.data.add_(0.05 * torch.randn_like(p))
    ids, mask, labels = batch_with_masks()
    pos = None
    if packed:  # TRL padding-free: several sequences per row, only position_ids mark the boundaries
        pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]]).expand(3, -1).contiguous()
        mask = None
        labels = ids.clone()
    out = model(ids, attention_mask=mask, labels=labels, position_ids=pos)
    reference, per_depth = naive_mtp_loss(model, ids, labels, mask, pos)
    assert torch.allclose(out.mtp_loss, reference, atol=1e-5)
    assert torch.allclose(out.mtp_losses, per_depth, atol=1e-5)
    main = F.cross_entropy(out.logits.flatten(0, 1), naive_targets(labels, 1, mask, pos).flatten(), ignore_index=-100)
    assert torch.allclose(out.loss, main + model.mtp_config.mtp_lambda * reference, atol=1e-5)


def test_chunk_size_does_not_change_loss_or_grads():
    model = MTPForCausalLM.from_base(tiny_base("llama", V), MTPConfig(head_type="medusa", num_mtp_heads=2))
    ids, mask, labels = batch_with_masks()
    results = []
    for chunk in (0, 1, 7):
        model.mtp_config.mtp_loss_chunk_size = chunk
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results.append((out.loss.detach(), model.base_model.get_input_embeddings().weight.grad.clone()))
    for loss, grad in results[1:]:
        assert torch.allclose(loss, results[0][0], atol=1e-6)
        assert torch.allclose(grad, results[0][1], atol=1e-6)


@pytest.mark.parametrize("topk", [None, 5])
def test_self_distill_equals_naive_soft_ce(topk):
    config = MTPConfig(
        head_type="blockwise",
        num_mtp_heads=2,
        mode="decoupled",
        decoupled_target="self_distill",
        self_distill_topk=topk,
        mtp_loss_chunk_size=4,
    )
    model = MTPForCausalLM.from_base(tiny_base("llama", V), config)
    for p in model.heads.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    ids, mask, labels = batch_with_masks()
    out = model(ids, attention_mask=mask, labels=labels)
    with torch.no_grad():
        head_logits = model.mtp_logits(ids, mask)
        main_logits = model.base_model(ids, attention_mask=mask).logits
    reference = 0.0
    for i in range(2):
        depth = i + 1
        valid = naive_targets(labels, 1 + depth, mask) != -100
        teacher = main_logits[:, depth:]  # position t+depth predicts token t+1+depth
        teacher = torch.cat([teacher, torch.zeros_like(main_logits[:, :depth])], dim=1)
        if topk:
            kth = teacher.topk(topk, dim=-1).values[..., -1:]
            teacher = teacher.masked_fill(teacher < kth, float("-inf"))
        p = teacher.softmax(-1)
        logq = head_logits[i].log_softmax(-1)
        soft_ce = -(torch.where(p > 0, p * logq, 0.0)).sum(-1)
        reference = reference + 0.5 * soft_ce[valid].mean()
    assert torch.allclose(out.mtp_loss, reference, atol=1e-5)


def test_masked_mean_by_hand_and_shared_by_ppo_and_the_world_model():
    """One masked mean: PPO's math and the world model's losses use this one (a second copy once lacked `dim`)."""
    from trl_mtp import world_model
    from trl_mtp.losses import masked_mean
    from trl_mtp.trainers import ppo_core

    x = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 4.0]
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # no real token: 0, not NaN
    assert world_model.masked_mean is ppo_core.masked_mean is masked_mean
