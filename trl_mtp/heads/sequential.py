"""Sequential heads (DeepSeek-V3 MTP modules): a causal chain over depths,

    h_0 = h (trunk, pre-norm),   h_i = Block_i(eh_proj_i([enorm_i(emb(x_{t+i})); hnorm_i(h_{i-1})])),
    logits_i = lm_head(shared_head.norm_i(h_i)),

with the base's embedding and LM head shared, teacher-forced tokens x_{t+i} in training (drafted ones in decoding).
Sub-module names follow transformers' native MTP layout (DeepSeek-V3 / GLM-4.5 checkpoints): `enorm`, `hnorm`,
`eh_proj` ([d, 2d], input `cat[enorm(emb), hnorm(h)]`), `shared_head.norm`, and the decoder layer under `mtp_block`.

On an architecture with transformers-native MTP layers (`native_layouts`), the chain is the native one: each depth
reads the normed state, final_norm(h) at depth 1 and shared_head.norm_{i-1}(h_{i-1}) after, as transformers' `MtpModel`
does, so native layers import and trained ones export with the same outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from trl_mtp.config import MTPConfig
from trl_mtp.heads.base import MTPHeads
from trl_mtp.heads.native_layouts import has_native_layout, mtp_layer_kwargs
from trl_mtp.heads.parallel import new_layer_like_last
from trl_mtp.heads.trunk import Trunk, call_layer, call_module


class SequentialDepth(nn.Module):
    """One MTP module of the chain (one depth)."""

    def __init__(self, trunk: Trunk, init_from_last_layer: bool):
        super().__init__()
        d = trunk.model.config.get_text_config().hidden_size
        # norms of the base's own norm class (copies of the final norm: same class, eps and scale)
        self.enorm = trunk.copy_final_norm()
        self.hnorm = trunk.copy_final_norm()
        # [0 | I]: the chain starts by passing hnorm(h_{i-1}) through; the embedding half learns from zero
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        with torch.no_grad():
            self.eh_proj.weight.zero_()
            self.eh_proj.weight[:, d:].copy_(torch.eye(d))
        self.mtp_block = new_layer_like_last(trunk, init_from_last_layer)
        self.shared_head = nn.Module()
        self.shared_head.norm = trunk.copy_final_norm()  # own post-norm, starts as the final norm


class SequentialHeads(MTPHeads):
    head_type = "sequential"
    uses_layer_kwargs = True

    def __init__(self, trunk: Trunk, config: MTPConfig):
        super().__init__(trunk, config)
        self.layers = nn.ModuleList(
            SequentialDepth(trunk, config.sequential_init_from_last_layer) for _ in range(self.num_depths)
        )
        self.native_chain = has_native_layout(trunk.model.config)
        self.configure_loss(config)

    def configure_loss(self, config: MTPConfig) -> None:
        self.frozen_embeddings = config.mode == "decoupled"

    def depth_hidden(self, depth, trunk_hidden, *, prev_hidden=None, tokens=None, layer_kwargs=None):
        if prev_hidden is None or tokens is None:
            raise ValueError("sequential heads need prev_hidden (h_{i-1}) and tokens (x_{t+i})")
        if layer_kwargs is None:
            layer_kwargs = self.trunk.layer_call_kwargs()
        module = self.layers[depth - 1]
        if self.native_chain:
            prev_hidden = (
                self.trunk.norm(prev_hidden, frozen=self.frozen_embeddings)
                if depth == 1
                else self.layers[depth - 2].shared_head.norm(prev_hidden)
            )
        emb = self.trunk.embed(tokens, frozen=self.frozen_embeddings)
        x = module.eh_proj(torch.cat([module.enorm(emb), module.hnorm(prev_hidden)], dim=-1))
        if self.native_chain:
            layer_kwargs = mtp_layer_kwargs(self.trunk, depth, layer_kwargs, x)
        return call_layer(module.mtp_block, x, layer_kwargs)

    def depth_logits(self, depth, hidden, frozen_base=False):
        normed = self.layers[depth - 1].shared_head.norm(hidden)
        return call_module(self.trunk.lm_head, normed, frozen=frozen_base)
