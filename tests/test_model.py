"""MTPForCausalLM as a model: outputs, Trainer-facing behaviour, loading by path."""

import pytest
import torch
from native_models import tiny_base

from trl_mtp import MTPConfig, MTPForCausalLM

V = 89


def test_forward_outputs_and_extra_trainer_kwargs():
    model = MTPForCausalLM.from_base(tiny_base("gpt2", V), MTPConfig(head_type="blockwise", num_mtp_heads=3))
    ids = torch.randint(0, V, (2, 8))
    out = model(ids, labels=ids, use_cache=False, return_dict=True)
    assert out.logits.shape == (2, 8, V)
    for name in ("mtp_losses", "mtp_accuracies", "mtp_entropies", "mtp_num_tokens"):
        assert getattr(out, name).shape == (3,) and not getattr(out, name).requires_grad
    assert out.mtp_num_tokens.tolist() == [12, 10, 8]
    assert torch.allclose(out.loss, out.main_loss + 0.3 * out.mtp_loss)
    assert model(ids).loss is None  # no labels, no loss
    # Trainer's num_items_in_batch: sums divided by it instead of means
    summed = model(ids, labels=ids, num_items_in_batch=7)
    assert torch.allclose(summed.main_loss * 7, out.main_loss * 14, atol=1e-5)


def test_trainer_facing_properties_and_generate():
    base = tiny_base("gpt2", V)
    model = MTPForCausalLM.from_base(base, MTPConfig(head_type="medusa", num_mtp_heads=2))
    assert model.config is base.config and model.device.type == "cpu" and model.dtype == torch.float32
    ids = torch.randint(0, V, (1, 4))
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(generated, base.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))
    model.gradient_checkpointing_enable()
    assert base.is_activation_checkpointing and model.trunk.is_checkpointing
    model.train()
    model(ids, labels=ids).loss.backward()  # hooks still capture under the base's gradient checkpointing
    assert all(p.grad is not None for p in model.heads.parameters())
    model.gradient_checkpointing_disable()


def test_from_base_by_path_and_not_an_mtp_checkpoint(tmp_path):
    tiny_base("gpt2", V).save_pretrained(tmp_path)
    model = MTPForCausalLM.from_base(str(tmp_path), MTPConfig(head_type="parallel", num_mtp_heads=1))
    assert len(model.heads.layers) == 1
    with pytest.raises(FileNotFoundError):
        MTPForCausalLM.from_pretrained(tmp_path)


def test_compute_mtp_loss_needs_a_matching_forward():
    model = MTPForCausalLM.from_base(tiny_base("gpt2", V), MTPConfig())
    ids = torch.randint(0, V, (2, 8))
    with pytest.raises(RuntimeError, match="captured"):
        model.compute_mtp_loss(ids, ids)
    model.base_model(ids[:, :5])
    with pytest.raises(RuntimeError, match="does not match"):
        model.compute_mtp_loss(ids, ids)


def test_public_names():
    import trl_mtp

    for name in ("MTPConfig", "MTPForCausalLM", "BlockwiseHeads", "ParallelHeads", "SequentialHeads", "MedusaHeads"):
        assert getattr(trl_mtp, name) is not None


def test_deepcopy_gets_its_own_hooks():
    """A copied wrapper (reference model) captures into its own trunk, never into the original's."""
    import copy

    model = MTPForCausalLM.from_base(tiny_base("gpt2", V), MTPConfig(head_type="sequential"))
    ids = torch.randint(0, V, (1, 6))
    expected = model(ids, labels=ids).mtp_loss
    hidden = model.trunk.hidden
    clone = copy.deepcopy(model)
    clone.base_model(ids[:, :4])
    assert model.trunk.hidden is hidden and clone.trunk.hidden.shape[1] == 4
    assert torch.allclose(clone(ids, labels=ids).mtp_loss, expected)
    clone.trunk.remove_hooks()
    model.base_model(ids[:, :3])
    assert model.trunk.hidden.shape[1] == 3  # the original's hooks survive the copy's removal


@pytest.mark.parametrize("head_type", ["parallel", "sequential"])
def test_heads_follow_base_gradient_checkpointing(head_type):
    """With the base checkpointing, head layers are recomputed in backward too: same loss and gradients."""
    model = MTPForCausalLM.from_base(tiny_base("gpt2", V), MTPConfig(head_type=head_type, num_mtp_heads=2)).train()
    ids = torch.randint(0, V, (2, 8))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.heads.parameters()])
    assert model.is_activation_checkpointing
    for plain, recomputed in zip(*grads):
        assert torch.allclose(plain, recomputed, atol=1e-6)
