"""Each family on Llama, Qwen3 and GPT-2: causality, gradient routing, save/load, the trainer (hook) path."""

import copy
import gc
import types

import pytest
import torch
from native_models import native_base, tiny_base

from trl_mtp import MTPConfig, MTPForCausalLM
from trl_mtp.config import HEAD_TYPES as FAMILIES
from trl_mtp.heads import Trunk

V = 101
ARCHS = ["llama", "qwen3", "gpt2"]


def wrap(arch, head_type, **config):
    torch.manual_seed(0)
    model = MTPForCausalLM.from_base(tiny_base(arch, V), MTPConfig(head_type=head_type, **config))
    with torch.no_grad():  # move off the zero init, so the heads are not all the main head
        for p in model.heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head_type", FAMILIES)
def test_causality(arch, head_type):
    """Changing token s changes no head output at positions t < s, except, for the sequential chain, positions
    whose teacher-forced tokens x_{t+1..t+i} include s (t >= s - i at depth i)."""
    model = wrap(arch, head_type, num_mtp_heads=3).eval()
    ids = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.mtp_logits(ids)
        for s in (3, 7):
            changed = ids.clone()
            changed[0, s] = (changed[0, s] + 1) % V
            after = model.mtp_logits(changed)
            for i in range(1, 4):
                last_unaffected = s - 1 - (i if head_type == "sequential" else 0)
                if last_unaffected >= 0:
                    assert torch.allclose(
                        before[i - 1, :, : last_unaffected + 1], after[i - 1, :, : last_unaffected + 1], atol=1e-6
                    ), (s, i)
                # and the change is visible right after (the test can fail)
                assert not torch.allclose(
                    before[i - 1, :, last_unaffected + 1 :], after[i - 1, :, last_unaffected + 1 :]
                )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head_type", FAMILIES)
@pytest.mark.parametrize("target", ["tokens", "self_distill"])
def test_decoupled_leaves_base_without_grad(arch, head_type, target):
    model = wrap(arch, head_type, num_mtp_heads=2, mode="decoupled", decoupled_target=target, share_lm_head=False)
    ids = torch.randint(0, V, (2, 9))
    model(ids, labels=ids).mtp_loss.backward()
    for name, p in model.base_model.named_parameters():
        assert p.grad is None or not p.grad.any(), name
    assert any(p.grad is not None and p.grad.any() for p in model.heads.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head_type", FAMILIES)
def test_coupled_trunk_gets_grad_from_mtp_loss_alone(arch, head_type):
    model = wrap(arch, head_type, num_mtp_heads=2)
    ids = torch.randint(0, V, (2, 9))
    model(ids, labels=ids).mtp_loss.backward()
    first_layer = next(iter(model.trunk.layers[0].parameters()))
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    assert model.base_model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head_type", FAMILIES)
def test_save_load_round_trip(arch, head_type, tmp_path):
    model = wrap(arch, head_type, num_mtp_heads=2, share_lm_head=False).eval()
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        logits, mtp_logits = model(ids).logits, model.mtp_logits(ids)
    model.save_pretrained(tmp_path)
    loaded = MTPForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.mtp_config == model.mtp_config
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)
        assert torch.equal(loaded.mtp_logits(ids), mtp_logits)


@pytest.mark.parametrize("head_type", FAMILIES)
def test_trainer_path_hooks_capture_trl_fused_forward(head_type):
    """TRL's fused LM head runs the backbone directly: the hooks still capture, and `compute_mtp_loss` on the
    captured states equals the wrapper's own forward."""
    from trl.trainer.utils import add_fused_lm_head

    model = wrap("llama", head_type, num_mtp_heads=2)
    ids = torch.randint(0, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    expected = model(ids, attention_mask=mask, labels=ids).mtp_loss
    add_fused_lm_head(model.base_model)
    fused = model.base_model(input_ids=ids, attention_mask=mask, labels=ids, fused_lm_head=True)
    mtp = model.compute_mtp_loss(ids, ids, attention_mask=mask)
    assert torch.allclose(mtp.loss, expected, atol=1e-6)
    (fused.loss + mtp.loss).backward()
    assert all(p.grad is not None for p in model.heads.parameters())


def test_num_depths_trains_only_first_heads():
    model = wrap("llama", "medusa", num_mtp_heads=3)
    ids = torch.randint(0, V, (2, 9))
    model.base_model(ids)
    out = model.compute_mtp_loss(ids, ids, num_depths=2)
    out.loss.backward()
    assert out.losses.shape == (2,)
    assert model.heads.res_blocks[2].weight.grad is None
    assert model.heads.res_blocks[1].weight.grad is not None


@pytest.mark.parametrize("head_type", FAMILIES)
def test_heads_learn_repetitive_corpus(head_type):
    """Period-7 sequences with a random phase: each next token is determined, so every depth can reach ~100%;
    chance is 1/7 at best. The trunk is trained too (coupled)."""
    torch.manual_seed(0)
    D, period = 3, 7
    model = MTPForCausalLM.from_base(
        tiny_base("llama", V), MTPConfig(head_type=head_type, num_mtp_heads=D, mtp_lambda=1.0)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.randperm(V)[:period]

    def batch(n=16, length=24):
        phase = torch.randint(0, period, (n, 1))
        return pattern[(phase + torch.arange(length)) % period]

    for _ in range(150):
        ids = batch()
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        ids = batch()
        accuracies = model(ids, labels=ids).mtp_accuracies
    assert (accuracies > 0.9).all(), accuracies


def reachable_tensor_bytes(root) -> int:
    """Bytes of every tensor storage reachable from `root` through Python references: module attributes,
    parameters, buffers, hooks (bound methods and closures), configs, ...; each storage counted once.
    Classes, Python modules and functions' globals are not followed (they reach the whole interpreter)."""
    storages, seen, stack = {}, set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            if obj.grad is not None:
                stack.append(obj.grad)
        if isinstance(obj, types.FunctionType):  # a hook's closure and defaults, not its module's globals
            stack.extend(cell.cell_contents for cell in obj.__closure__ or ())
            stack.extend([*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()])
            continue
        stack.extend(gc.get_referents(obj))
    return sum(storages.values())


def module_tensor_bytes(*modules) -> int:
    storages = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def assert_holds_base_and_heads_only(model):
    expected = module_tensor_bytes(model.base_model, model.heads)
    reachable = reachable_tensor_bytes(model)
    assert reachable <= 1.01 * expected, (
        f"{reachable} bytes reachable, base + heads = {expected}: "
        f"{(reachable - expected) / module_tensor_bytes(model.base_model):.1f} hidden copies of the base"
    )


@pytest.mark.parametrize("head_type", FAMILIES)
def test_wrapper_holds_no_hidden_copy_of_the_base(head_type):
    """A D = 4 wrapper holds base + heads and nothing more: no head keeps a reference to a copy of the base (a
    deep-copied module that carried our capture hook, bound to the trunk, used to copy the whole base with it)."""
    model = MTPForCausalLM.from_base(
        tiny_base("llama", V), MTPConfig(head_type=head_type, num_mtp_heads=4, share_lm_head=False)
    )
    assert_holds_base_and_heads_only(model)
    ids = torch.randint(0, V, (1, 6))
    model(ids, labels=ids)  # the hooks fire into the wrapper's own trunk only; the capture is then dropped
    model.trunk.clear()
    assert_holds_base_and_heads_only(model)


def test_memory_check_catches_a_head_copied_with_the_capture_hook(monkeypatch):
    """The check above fails on heads built by deep-copying the final norm with its capture hook still on."""
    monkeypatch.setattr(Trunk, "copy_final_norm", lambda trunk: copy.deepcopy(trunk.final_norm))
    model = MTPForCausalLM.from_base(tiny_base("llama", V), MTPConfig(head_type="sequential", num_mtp_heads=4))
    with pytest.raises(AssertionError, match="12.0 hidden copies of the base"):
        assert_holds_base_and_heads_only(model)


def test_native_import_holds_no_hidden_copy_of_the_base(tmp_path):
    """Sequential heads imported from transformers' MtpModel keep its layers, not the MtpModel (nor its base)."""
    from trl_mtp.native import export_native

    exported = MTPForCausalLM.from_base(native_base("glm4_moe"), MTPConfig(head_type="sequential", num_mtp_heads=2))
    export_native(exported, tmp_path)
    assert_holds_base_and_heads_only(MTPForCausalLM.from_pretrained(tmp_path))
