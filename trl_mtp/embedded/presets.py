"""Tiny model presets: Llama, Qwen3 and GPT-2 configs at ~1M and ~10M parameters, randomly initialised.

Sized to train in minutes on 2 CPU cores. Each preset is a transformers config, so everything downstream
(heads, trainers, decoding) sees an ordinary HF causal LM of that family and nothing assumes one family.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel, Qwen3Config

MAX_POSITIONS = 1024  # star-graph prompts with digits split one per token reach a few hundred tokens


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
    )


def _qwen3(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    # Qwen3's head_dim defaults to 128 whatever the width: tie it to hidden / heads.
    return dict(_llama(hidden, layers, heads, intermediate), head_dim=hidden // heads)


def _gpt2(hidden: int, layers: int, heads: int) -> dict:
    # GPT-2's default dropout (0.1) only adds noise to runs this short; 0 keeps training deterministic.
    return dict(
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=MAX_POSITIONS,
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


# name -> (config class, config kwargs, description). Parameter counts are for vocab 2048.
_PRESETS: dict[str, tuple[type, dict, str]] = {
    "tiny-llama": (LlamaConfig, _llama(128, 4, 4, 384), "Llama, hidden 128, 4 layers, ~1.1M params"),
    "small-llama": (LlamaConfig, _llama(256, 8, 4, 1024), "Llama, hidden 256, 8 layers, ~8.9M params"),
    "tiny-qwen3": (Qwen3Config, _qwen3(128, 4, 4, 384), "Qwen3 (q/k norm), hidden 128, 4 layers, ~1.1M params"),
    "small-qwen3": (Qwen3Config, _qwen3(256, 8, 4, 1024), "Qwen3 (q/k norm), hidden 256, 8 layers, ~8.9M params"),
    "tiny-gpt2": (GPT2Config, _gpt2(128, 4, 4), "GPT-2 (learned positions), hidden 128, 4 layers, ~1.2M params"),
    "small-gpt2": (GPT2Config, _gpt2(256, 10, 4), "GPT-2 (learned positions), hidden 256, 10 layers, ~8.6M params"),
}

PRESETS: dict[str, str] = {name: desc for name, (_, _, desc) in _PRESETS.items()}


def build_config(preset: str, vocab_size: int, *, tokenizer=None, **overrides):
    """The transformers config of `preset`; `tokenizer` (optional) supplies bos/eos/pad ids, `overrides` win."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(_PRESETS)}")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    config_class, kwargs, _ = _PRESETS[preset]
    # No family default special ids (GPT-2's 50256 lies outside a small vocab): they come from the tokenizer.
    kwargs = dict(kwargs, vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if tokenizer is not None:
        kwargs.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    kwargs.update(overrides)
    return config_class(**kwargs)


def build_model(
    preset: str, vocab_size: int, *, seed: int = 0, tokenizer=None, attn_implementation: str = "sdpa", **overrides
) -> PreTrainedModel:
    """A randomly initialised causal LM from `preset`, the same weights for the same `seed`.

    `tokenizer` (optional) sets bos/eos/pad ids in the config (and so in the generation config); any config
    field can be overridden by keyword, e.g. `num_hidden_layers=2` or `n_layer=2` for GPT-2.
    Use `attn_implementation="eager"` when attention weights are needed (diagnostics).
    """
    config = build_config(preset, vocab_size, tokenizer=tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):  # deterministic init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.float()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
