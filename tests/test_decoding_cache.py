"""The decoding cache follows the model's layout: sliding windows stay lossless at batch > 1 (rows' holes moved out
of every window), caches that cannot drop rejected drafts are refused, and rounds never verify past the model's
last position. Greedy outputs are compared with `generate`'s row by row (float64, see tests/test_decoding.py)."""

from __future__ import annotations

import pytest
import torch
from decoding_models import FAMILIES, check_identity, random_batch, wrap
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.cache_utils import DynamicSlidingWindowLayer

import trl_mtp.decoding as decoding
from trl_mtp.decoding import new_cache
from trl_mtp.embedded.presets import build_model

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
WINDOWED = {
    "mistral": dict(sliding_window=8),  # every layer windowed
    "gemma2": dict(sliding_window=8, head_dim=16),
}  # a windowed layer, then a full one; logit soft-capping
ATTENTION = {"mistral": "sdpa", "gemma2": "eager"}  # Gemma-2 has no sdpa path


def windowed_base(model_type: str, seed: int = 0):
    config = AutoConfig.for_model(model_type, **TINY, **WINDOWED[model_type])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION[model_type])


@pytest.mark.parametrize("model_type", list(WINDOWED))
@pytest.mark.parametrize("family", FAMILIES)
def test_sliding_window_batches_match_generate(family, model_type):
    model = wrap(windowed_base(model_type), family, perturb=0.3)
    ids, mask = random_batch(1, 3, max_len=12)
    stats = check_identity(model, ids, mask, 30)
    kept = [k for round_ in stats["accepted_per_round"] for k in round_ if k >= 0]
    assert len(set(kept)) > 1  # rows kept different numbers of drafts: holes were made


def test_holes_left_inside_the_window_break_identity(monkeypatch):
    """Without moving the holes, rejected drafts count inside later windows (the bug this layout fixes)."""
    model = wrap(windowed_base("mistral"), "blockwise", perturb=0.3)
    ids, mask = random_batch(1, 3, max_len=12)
    check_identity(model, ids, mask, 30)
    plan = decoding.SlotUpdate.plan
    monkeypatch.setattr(decoding.SlotUpdate, "plan", staticmethod(lambda start, kept, window: plan(start, kept, None)))
    with pytest.raises(AssertionError):
        check_identity(model, ids, mask, 30)


def test_cache_is_laid_out_from_the_config():
    layers = new_cache(windowed_base("gemma2").config).layers
    assert [type(layer).__name__ for layer in layers] == ["DynamicSlidingWindowLayer", "DynamicLayer"]
    assert isinstance(layers[0], DynamicSlidingWindowLayer) and layers[0].sliding_window == 8


def test_caches_that_cannot_be_cropped_are_refused():
    config = AutoConfig.for_model("qwen3_next", vocab_size=96, hidden_size=64, num_hidden_layers=4)
    with pytest.raises(ValueError, match="'linear_attention' \\(LinearAttentionLayer\\)"):
        new_cache(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_verify_past_the_last_position(family):
    """GPT-2 has 32 learned positions: a 10-token prompt and 22 new tokens fill them, as `generate` does; rounds
    near the end draft fewer tokens instead of indexing past the position table."""
    base = build_model("tiny-gpt2", 96, seed=0, n_layer=2, n_positions=32)
    model = wrap(base, family)
    ids, mask = random_batch(5, 1, max_len=10)
    stats = check_identity(model, ids, mask, 22)
    assert stats["drafted"] < (stats["forwards"] - 1) * 3  # some rounds drafted fewer than 3 tokens
    ids, mask = random_batch(5, 3, max_len=10)  # left padding: the longest row meets the limit first
    check_identity(model, ids, mask, 22)
