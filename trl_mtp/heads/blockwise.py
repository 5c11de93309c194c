"""Blockwise parallel heads (Stern et al. 2018): z_i = h + W2_i act(W1 h).

W1: d -> m*d is shared by all depths (one feature extractor), W2_i: m*d -> d is each depth's own read-out.
W2_i starts at zero, so every depth starts as an exact copy of the main head: the MTP loss begins at a sane value
(the main model's distribution one step off) and, in coupled mode, no random head pushes noise into the trunk; W2_i
still gets gradient at step 0 (act(W1 h) is non-zero), and W1 from step 1 on.
"""

from __future__ import annotations

from torch import nn

from trl_mtp.config import MTPConfig
from trl_mtp.heads.base import MTPHeads
from trl_mtp.heads.trunk import Trunk


class BlockwiseHeads(MTPHeads):
    head_type = "blockwise"

    def __init__(self, trunk: Trunk, config: MTPConfig):
        super().__init__(trunk, config)
        d, m = self.hidden_size, config.blockwise_hidden_mult
        self.shared_proj = nn.Linear(d, m * d)  # W1
        self.act = nn.SiLU()
        self.out_projs = nn.ModuleList(nn.Linear(m * d, d) for _ in range(self.num_depths))  # W2_i
        for proj in self.out_projs:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def depth_hidden(self, depth, trunk_hidden, *, prev_hidden=None, tokens=None, layer_kwargs=None):
        features = self.act(self.shared_proj(trunk_hidden))
        return trunk_hidden + self.out_projs[depth - 1](features)

    def iter_depth_hiddens(self, trunk_hidden, input_ids, layer_kwargs=None, num_depths=None):
        # W1 h is shared: compute it once for all depths instead of once per depth
        features = self.act(self.shared_proj(trunk_hidden))
        for depth in range(1, (num_depths or self.num_depths) + 1):
            yield depth, trunk_hidden + self.out_projs[depth - 1](features)
