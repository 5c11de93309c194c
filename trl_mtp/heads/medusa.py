"""Medusa heads (Cai et al. 2024): z_i = h + SiLU(W_i h + b_i), W_i and b_i zero-init (each depth starts as the
main head), logits through the base's final norm and either the base LM head (`share_lm_head=True`) or the
depth's own copy of it (`False`, Medusa-1's layout: V x d parameters per depth).
"""

from __future__ import annotations

from torch import nn

from trl_mtp.config import MTPConfig
from trl_mtp.heads.base import MTPHeads
from trl_mtp.heads.trunk import Trunk, call_module


class MedusaHeads(MTPHeads):
    head_type = "medusa"

    def __init__(self, trunk: Trunk, config: MTPConfig):
        super().__init__(trunk, config)
        d = self.hidden_size
        self.res_blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(self.num_depths))
        for block in self.res_blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        self.act = nn.SiLU()
        self.share_lm_head = config.share_lm_head
        if not self.share_lm_head:
            # own copies start equal to the base head (and untied from the embeddings)
            self.lm_heads = nn.ModuleList(trunk.copy_module(trunk.lm_head) for _ in range(self.num_depths))

    def depth_hidden(self, depth, trunk_hidden, *, prev_hidden=None, tokens=None, layer_kwargs=None):
        return trunk_hidden + self.act(self.res_blocks[depth - 1](trunk_hidden))

    def depth_logits(self, depth, hidden, frozen_base=False):
        if self.share_lm_head:
            return self.trunk.logits(hidden, frozen=frozen_base)
        return call_module(self.lm_heads[depth - 1], self.trunk.norm(hidden, frozen=frozen_base), frozen=False)
