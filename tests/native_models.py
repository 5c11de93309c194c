"""Tiny models for the tests, from configs written here (nothing downloaded): the presets' Llama, Qwen3 and GPT-2 at
hidden size 32 on a small vocabulary (`tiny_base`), and the architectures with transformers-native MTP layers
(`native_base`). (Models on the embedded tokenizer: the `tiny_model` fixture of tests/conftest.py.)"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from trl_mtp.embedded.presets import build_model


def tiny_base(arch: str, vocab_size: int, seed: int = 0):
    """The preset `tiny-<arch>` (llama, qwen3, gpt2) shrunk to hidden size 32, 2 layers, 2 heads."""
    if arch == "gpt2":
        return build_model("tiny-gpt2", vocab_size, seed=seed, n_embd=32, n_layer=2, n_head=2)
    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
    )
    if arch == "qwen3":
        kwargs["head_dim"] = 16
    return build_model(f"tiny-{arch}", vocab_size, seed=seed, **kwargs)


COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
MOE = dict(moe_intermediate_size=32, num_experts_per_tok=2)
DEEPSEEK_MOE = dict(**MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1)
CONFIGS = {
    "glm4_moe": dict(**DEEPSEEK_MOE, head_dim=16),
    # latent (MLA) attention: KV heads = attention heads, as in every released DeepSeek-V3 (transformers' attention
    # fails on a cache with fewer, see test_native.py)
    "deepseek_v3": dict(
        **DEEPSEEK_MOE,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        num_key_value_heads=4,
    ),
    # Mellum's MTP layer is a sliding-attention layer with its own rope theta: different from the trunk's last layer;
    # a window shorter than the test sequences, so it bites
    "mellum": dict(
        **MOE,
        head_dim=16,
        num_experts=4,
        num_mtp_layers=1,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
        },
    ),
}


def native_base(model_type: str, vocab_size: int = 128, seed: int = 0, tokenizer=None, **overrides):
    """A randomly initialised tiny model of `model_type` (float32, sdpa); `overrides` win over the config fields."""
    ids = {}
    if tokenizer is not None:
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = AutoConfig.for_model(
        model_type, vocab_size=vocab_size, **{**COMMON, **CONFIGS[model_type], **overrides}, **ids
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
