"""Attention maps of the base's last layers and of the attention-bearing heads (parallel, sequential).

Fused kernels (sdpa, flash) never materialise attention weights, so for the duration of a capture every config in
the model tree is switched to `eager` (the base's mask is then built for eager too, and the heads' layer copies,
which carry their own config copies, follow), and restored after. Weights are read with forward hooks on the
attention modules, which in transformers 5 return `(attn_output, attn_weights)`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import PretrainedConfig


def attention_module(layer: nn.Module) -> nn.Module | None:
    """The first submodule of a decoder layer whose class is an attention (`LlamaAttention`, `GPT2Attention`...)."""
    return next((m for m in layer.modules() if type(m).__name__.endswith("Attention")), None)


def attention_modules(mtp_model, base_layers: int = 2) -> dict[str, nn.Module]:
    """name -> attention module: `base.layer{j}` for the last `base_layers` trunk layers, `head{i}` per depth of the
    families made of decoder layers (none for blockwise / medusa)."""
    layers = mtp_model.trunk.layers
    found = {}
    for j in range(max(len(layers) - base_layers, 0), len(layers)):
        found[f"base.layer{j}"] = attention_module(layers[j])
    if mtp_model.heads.uses_layer_kwargs:
        for i, layer in enumerate(mtp_model.heads.layers, start=1):
            found[f"head{i}"] = attention_module(layer)
    return {name: module for name, module in found.items() if module is not None}


@contextlib.contextmanager
def eager_attention(*models: nn.Module):
    """Every distinct config in the module trees uses eager attention inside the block."""
    configs = {}
    for model in models:
        for module in model.modules():
            config = getattr(module, "config", None)
            if isinstance(config, PretrainedConfig):
                configs[id(config)] = config
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


@contextlib.contextmanager
def capture_attention(mtp_model, base_layers: int = 2, row: int = 0):
    """Inside, forwards record the attention weights of `row` as float16 [H, T, T] into the yielded dict."""
    maps: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def keep(module, args, output):
            if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]):
                maps[name] = output[1][row].detach().to("cpu", torch.float16)

        return keep

    modules = attention_modules(mtp_model, base_layers)
    with eager_attention(mtp_model.base_model, mtp_model.heads):
        try:
            handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
            yield maps
        finally:
            for handle in handles:
                handle.remove()
