"""Where each architecture with transformers-native MTP layers keeps them, and how such a layer is called.

A native MTP layer (DeepSeek-V3, GLM-4.5, Mellum) is one `sequential` depth; the sequential family reads here whether
the base has that layout (then it follows the native chain) and what a depth's own layer type changes in the trunk's
layer kwargs (Mellum: sliding attention with its own rope theta). Import and export (`trl_mtp.native`) read the key
layout from here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# names of a sequential depth's own modules -> checkpoint names (the decoder block's keys follow `block`)
_DEEPSEEK_NAMES = {"enorm": "enorm", "hnorm": "hnorm", "eh_proj": "eh_proj", "shared_head.norm": "shared_head.norm"}
_MELLUM_NAMES = {
    "enorm": "pre_fc_norm_embedding",
    "hnorm": "pre_fc_norm_hidden",
    "eh_proj": "fc",
    "shared_head.norm": "norm",
}


@dataclass(frozen=True)
class NativeLayout:
    """Where an architecture's checkpoints keep MTP layer i (0-based) of a model with L decoder layers: `own` and
    `block` are the key prefixes of the layer's own modules and of its decoder block, `{i}` and `{layer}` (= L + i)
    filled in."""

    names: dict
    max_layers: int | None  # None: any number
    own: str
    block: str

    def prefix(self, num_hidden_layers: int, i: int) -> str:
        """Checkpoint prefix of layer i's own modules."""
        return self.own.format(i=i, layer=num_hidden_layers + i)

    def block_prefix(self, num_hidden_layers: int, i: int) -> str:
        """Checkpoint prefix of layer i's decoder block."""
        return self.block.format(i=i, layer=num_hidden_layers + i)


# DeepSeek-V3 / GLM-4.5: MTP layer i is decoder layer L + i (its block's keys beside its own); Mellum: under `mtp.`
_DEEPSEEK_LAYOUT = NativeLayout(_DEEPSEEK_NAMES, None, own="model.layers.{layer}.", block="model.layers.{layer}.")
ARCHITECTURES: dict[str, NativeLayout] = {
    "deepseek_v3": _DEEPSEEK_LAYOUT,
    "glm4_moe": _DEEPSEEK_LAYOUT,
    "mellum": NativeLayout(_MELLUM_NAMES, 1, own="mtp.", block="mtp.layers.{i}."),
}


def has_native_layout(config) -> bool:
    """Whether transformers has native MTP layers for this model's architecture (and we map them)."""
    return config.get_text_config().model_type in ARCHITECTURES


def native_layout(config) -> NativeLayout:
    """The layout of the model's architecture; a ValueError naming its model type when there is none."""
    model_type = config.get_text_config().model_type
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type={model_type!r}: no native MTP layout; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def mtp_layer_kwargs(trunk, depth: int, layer_kwargs: dict, hidden: torch.Tensor) -> dict:
    """The trunk's last-layer kwargs made right for depth `depth`'s own layer type, where the config gives MTP layers
    one (Mellum: sliding attention with another rope theta): that type's rotary embeddings, and its sliding window
    applied to the attention mask. `hidden` [B, Q, d] is the layer's input (its queries)."""
    text = trunk.model.config.get_text_config()
    types = getattr(text, "mtp_layer_types", None)
    if not types:
        return layer_kwargs
    layer_type = types[min(depth, len(types)) - 1]  # depths past the checkpoint's MTP layers: the last one's type
    kwargs = dict(layer_kwargs)
    rotary = getattr(trunk.decoder, "rotary_emb", None)
    per_type_rope = rotary is not None and text.nested_rope_parameter_keys(text.rope_parameters)
    if per_type_rope and kwargs.get("position_ids") is not None:
        kwargs["position_embeddings"] = rotary(hidden, position_ids=kwargs["position_ids"], layer_type=layer_type)
    if layer_type == "sliding_attention":
        kwargs["attention_mask"] = sliding_window_mask(
            kwargs.get("attention_mask"), hidden, text.sliding_window, text._attn_implementation
        )
    return kwargs


def sliding_window_mask(mask, hidden: torch.Tensor, window: int, attn_implementation: str):
    """A layer's 4-D attention mask [B, 1, Q, K] restricted to a sliding window: query q sees key k only if
    q - window < k (transformers' window), the queries being the last Q of the K keys (a training sequence, or the
    drafting slots after a cache); `hidden` [B, Q, d] holds the queries. `None` (sdpa's implicit causal mask over the
    queries alone) becomes an explicit one. Unchanged while no query sees more than `window` keys."""
    num_queries = hidden.size(1)
    num_keys = num_queries if mask is None else mask.size(-1)
    if num_keys <= window:
        return mask
    if attn_implementation not in ("sdpa", "eager") or not (mask is None or torch.is_tensor(mask)):
        raise ValueError(
            f"attn_implementation={attn_implementation!r}: a sliding-window MTP layer over {num_keys} "
            f"positions (window {window}) needs sdpa or eager attention"
        )
    queries = torch.arange(num_keys - num_queries, num_keys, device=hidden.device)[:, None]
    keys = torch.arange(num_keys, device=hidden.device)[None, :]
    in_window = keys > queries - window
    if mask is None:
        return (in_window & (keys <= queries))[None, None]
    if mask.dtype == torch.bool:
        return mask & in_window
    return mask.masked_fill(~in_window, torch.finfo(mask.dtype).min)  # eager: an additive mask
