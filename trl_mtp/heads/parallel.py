"""Parallel heads (Gloeckle et al. 2024): per depth, one decoder layer of the base model's own class, with its
own weights, over the trunk's hidden sequence: z_i = Layer_i(h).

Each layer is called with exactly the keyword arguments the trunk's last layer got in the same forward (attention
mask, rotary embeddings, ...; see `Trunk.layer_call_kwargs`), so the head is architecture-agnostic: GPT-2 blocks,
Llama/Qwen3 layers with rotary embeddings, padding and packed-sequence masks all work unchanged.
"""

from __future__ import annotations

from torch import nn

from trl_mtp.config import MTPConfig
from trl_mtp.heads.base import MTPHeads
from trl_mtp.heads.trunk import Trunk, call_layer


def new_layer_like_last(trunk: Trunk, init_from_last_layer: bool) -> nn.Module:
    """A decoder layer of the trunk's class: a copy of the last one, or re-initialised the base model's way."""
    layer = trunk.copy_last_layer()
    if not init_from_last_layer:
        layer.apply(trunk.model._init_weights)
    return layer


class ParallelHeads(MTPHeads):
    head_type = "parallel"
    uses_layer_kwargs = True

    def __init__(self, trunk: Trunk, config: MTPConfig):
        super().__init__(trunk, config)
        self.layers = nn.ModuleList(
            new_layer_like_last(trunk, config.parallel_init_from_last_layer) for _ in range(self.num_depths)
        )

    def depth_hidden(self, depth, trunk_hidden, *, prev_hidden=None, tokens=None, layer_kwargs=None):
        if layer_kwargs is None:
            layer_kwargs = self.trunk.layer_call_kwargs()
        return call_layer(self.layers[depth - 1], trunk_hidden, layer_kwargs)
