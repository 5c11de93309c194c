"""The conformance paths catch what they are for: each check fails on a deliberately broken implementation, and the
tiny models carry the real checkpoints' values."""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import torch

import trl_mtp.decoding as decoding
from trl_mtp.conformance import configs
from trl_mtp.conformance.configs import CHECKPOINTS, tiny_id, tiny_model
from trl_mtp.conformance.paths import (
    SAMPLED_ALPHA,
    SAMPLED_ROWS,
    held_bytes,
    ks_uniform_pvalue,
    run_cell,
    sampled_against_generate,
)
from trl_mtp.conformance.subjects import new_heads, tiny_subject


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_tiny_models_carry_the_checkpoints_values(name):
    """Every value written in the factory reaches the model (a misspelt key would be dropped silently)."""
    checkpoint = CHECKPOINTS[name]
    model = tiny_model(name)
    for key, value in checkpoint.config.items():
        got = getattr(model.config, key)
        if isinstance(value, dict):  # transformers may add defaults to rope parameters
            got = {k: got[k] for k in value}
        assert got == value, (key, got, value)
    generation = model.generation_config
    for key, value in checkpoint.generation.items():
        expected = configs.tiny_ids(value) if key.endswith("token_id") else value
        assert getattr(generation, key) == expected, key
    assert not model.training  # as from_pretrained gives it: dropout off in generate


def test_real_configs_take_their_own_code_paths():
    assert tiny_model("gpt2").transformer.drop.p == 0.1 and tiny_model("gpt2").config.n_positions == 32
    gemma = tiny_model("gemma2")
    assert gemma.get_input_embeddings().weight is gemma.get_output_embeddings().weight
    assert gemma.config._attn_implementation == "eager" and gemma.config.final_logit_softcapping == 30.0
    assert tiny_model("llama3").model.rotary_emb.rope_type == "llama3"
    assert tiny_model("deepseek_v3").model.rotary_emb.rope_type == "yarn"
    # special ids stay distinct in the tiny vocabulary (Llama-3's bos and three EOS, Phi-3's bos and EOS)
    assert len({tiny_id(i) for i in (128000, 128001, 128008, 128009)}) == 4
    assert len({tiny_id(i) for i in (1, 32000, 32001, 32007)}) == 4


def test_greedy_path_fails_when_a_rejected_draft_is_kept(monkeypatch):
    subject = tiny_subject("llama3")
    assert run_cell(subject, "greedy", "blockwise").status == "pass"
    real = decoding.accept_greedy

    def keeps_one_too_many(logits, drafts, *args):
        k, _ = real(logits, drafts, *args)
        k = (k + 1).clamp(max=drafts.size(1))
        return k, logits.argmax(-1).gather(1, k[:, None]).squeeze(1)

    monkeypatch.setattr(decoding, "accept_greedy", keeps_one_too_many)
    result = run_cell(subject, "greedy", "blockwise")
    assert result.status == "fail" and "differs from generate" in result.reason


def test_decoding_paths_fail_without_the_generation_configs_processors(monkeypatch):
    """Dropping the processors generate builds from the generation config: Qwen2.5's repetition penalty changes
    greedy's tokens, Llama-3's temperature 0.6 / top_p 0.9 its distribution."""
    from transformers import LogitsProcessorList

    qwen, llama = tiny_subject("qwen2.5"), tiny_subject("llama3")
    assert run_cell(qwen, "greedy", "blockwise").status == "pass"
    assert run_cell(llama, "sampled", "blockwise").status == "pass"
    real = decoding.generation_settings
    monkeypatch.setattr(
        decoding, "generation_settings", lambda *args, **kwargs: (real(*args, **kwargs)[0], LogitsProcessorList())
    )
    result = run_cell(qwen, "greedy", "blockwise")
    assert result.status == "fail" and "differs from generate" in result.reason
    result = run_cell(llama, "sampled", "blockwise")
    assert result.status == "fail" and "generate's distribution" in result.reason


def test_greedy_path_fails_when_holes_stay_inside_a_sliding_window(monkeypatch):
    subject = tiny_subject("mistral")
    assert run_cell(subject, "greedy", "parallel").status == "pass"
    real = decoding.SlotUpdate.plan
    monkeypatch.setattr(
        decoding.SlotUpdate, "plan", classmethod(lambda cls, new_start, kept, window: real(new_start, kept, None))
    )
    assert run_cell(subject, "greedy", "parallel").status == "fail"


def test_position_limit_path_fails_when_drafts_pass_the_last_position(monkeypatch):
    subject = tiny_subject("gpt2")
    assert run_cell(subject, "position_limit", "blockwise").status == "pass"
    monkeypatch.setattr(decoding, "drafts_that_fit", lambda state, num_drafts, max_positions: num_drafts)
    result = run_cell(subject, "position_limit", "blockwise")
    assert result.status == "fail" and "IndexError" in result.reason


@pytest.mark.parametrize("name", ["llama3", "qwen2.5", "mistral"])
def test_sampling_check_passes_generate_and_fails_wrong_samplers(name):
    """generate's own samples pass; samples at another temperature, or without its top-k / top-p, fail."""
    base = tiny_model(name)
    model = types.SimpleNamespace(base_model=base)
    ids, mask = tiny_subject(name).prompts([6, 9] * (SAMPLED_ROWS // 2), "cpu")
    temperature = base.generation_config.temperature or 1.0

    def check(**sampling):
        torch.manual_seed(0)
        samples = base.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, **sampling)
        impossible, u = sampled_against_generate(model, ids, mask, samples, torch.Generator().manual_seed(0))
        return impossible, ks_uniform_pvalue(u)

    impossible, p = check()
    assert impossible == 0 and p > SAMPLED_ALPHA
    for wrong in ({"temperature": temperature * 0.6}, {"temperature": temperature * 1.3}):
        impossible, p = check(**wrong)
        assert impossible > 0 or p < SAMPLED_ALPHA, wrong
    impossible, _ = check(top_k=0, top_p=1.0)  # the full distribution: tokens generate never draws
    assert impossible > 0


def test_ks_pvalue_of_uniform_and_of_shifted_values():
    u = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ks_uniform_pvalue(u) > 0.05
    assert ks_uniform_pvalue(u**0.7) < 1e-6  # pushed towards 1: a sampler too flat


def test_memory_count_sees_a_hidden_copy_behind_a_hook():
    """A deep copy of the final norm carries its capture hook, bound to a Trunk that deep-copies the base with it:
    held_bytes must count that copy, which no parameter list shows."""
    model = new_heads(tiny_model("llama3"), "blockwise")
    held, own = held_bytes(model)
    assert held <= 1.01 * own
    base = sum(p.numel() * p.element_size() for p in model.base_model.parameters())
    model.heads.hidden = copy.deepcopy(model.trunk.final_norm)  # registered: its own weight is counted in `own`
    held, own = held_bytes(model)
    assert held > own + 0.99 * base  # the base again (its final norm is the registered copy itself)


def test_save_load_path_fails_when_heads_are_not_saved(monkeypatch):
    import trl_mtp.model

    subject = tiny_subject("llama3")
    assert run_cell(subject, "save_load", "parallel").status == "pass"
    real = trl_mtp.model.save_file
    monkeypatch.setattr(
        trl_mtp.model,
        "save_file",
        lambda state, path, **kw: real({k: torch.zeros_like(v) for k, v in state.items()}, path, **kw),
    )
    result = run_cell(subject, "save_load", "parallel")
    assert result.status == "fail" and "heads' tensors differ" in result.reason


def test_position_limit_path_refuses_a_long_context(monkeypatch):
    long = dataclasses.replace(
        CHECKPOINTS["mistral"], config={**CHECKPOINTS["mistral"].config, "max_position_embeddings": 32768}
    )
    monkeypatch.setitem(CHECKPOINTS, "mistral", long)
    result = run_cell(tiny_subject("mistral"), "position_limit", "blockwise")
    assert result.status == "refused" and "32768" in result.reason


def test_a_crash_is_a_one_line_failure(monkeypatch):
    from trl_mtp.conformance import paths

    def crashes(subject, family):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(paths.PATHS, "greedy", (crashes, "all"))
    result = run_cell(tiny_subject("llama3"), "greedy", "medusa")
    assert (result.status, result.reason, result.path) == ("fail", "RuntimeError: boom", "greedy[medusa]")


@pytest.mark.slow
def test_sft_path_fails_when_the_heads_get_no_loss(monkeypatch):
    from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin

    monkeypatch.setattr(MTPTrainerMixin, "add_mtp_loss", lambda self, loss, *args, **kwargs: loss)
    result = run_cell(tiny_subject("llama3"), "sft", "parallel")
    assert result.status == "fail" and "MTP losses []" in result.reason
