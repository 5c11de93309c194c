"""`MTPHeads`: what every head family shares.

A family turns the trunk's pre-norm last hidden state h [B, T, d] into, per depth i = 1..D, a hidden z_i [B, T, d]
in the same pre-norm space; depth i at position t predicts token t+1+i. Logits are lm_head(final_norm(z_i)) with
the base model's own modules unless a family owns its norm / LM head (`depth_logits`).

The one per-depth method, for training and decoding alike:

    z_i = heads.depth_hidden(i, trunk_hidden, prev_hidden=z_{i-1}, tokens=x_{t+i}, layer_kwargs=...)

computed for whatever slice of positions the caller passes (all of a training sequence, or the last position when
drafting). `prev_hidden` (z_0 = h) and `tokens` (the token at position t+i for each position t) matter only to the
sequential family; `layer_kwargs` (attention mask, rotary embeddings, ...) only to the families built of decoder
layers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trl_mtp.config import MTPConfig
from trl_mtp.heads.trunk import Trunk


def shift_tokens(input_ids: torch.Tensor, depth: int, pad_token_id: int) -> torch.Tensor:
    """tokens[:, t] = input_ids[:, t + depth]; positions past the end get `pad_token_id` (their labels are masked)."""
    if depth == 0:
        return input_ids
    pad = input_ids.new_full((input_ids.size(0), min(depth, input_ids.size(1))), pad_token_id)
    return torch.cat([input_ids[:, depth:], pad], dim=1)


class MTPHeads(nn.Module):
    """Base class of the head families. Subclasses set `head_type` and implement `depth_hidden`."""

    head_type: str = ""
    uses_layer_kwargs: bool = False  # families made of decoder layers need the trunk's layer kwargs

    def __init__(self, trunk: Trunk, config: MTPConfig):
        super().__init__()
        self.trunk = trunk  # plain object: the base model's modules are not registered (saved) twice
        self.num_depths = config.num_mtp_heads
        self.hidden_size = trunk.model.config.get_text_config().hidden_size

    def configure_loss(self, config: MTPConfig) -> None:
        """Take the loss fields a family needs in its forward (e.g. the sequential chain's detached embeddings in
        decoupled mode); called at construction and whenever a run changes them (`MTPForCausalLM.set_loss_config`)."""

    def depth_hidden(
        self,
        depth: int,
        trunk_hidden: torch.Tensor,
        *,
        prev_hidden: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        layer_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """z_depth [B, T, d] (pre-norm) from the trunk hidden h [B, T, d]; depth in 1..D."""
        raise NotImplementedError

    def depth_logits(self, depth: int, hidden: torch.Tensor, frozen_base: bool = False) -> torch.Tensor:
        """Logits of depth `depth` from its pre-norm hidden: lm_head(final_norm(z)) with the base's modules.
        `frozen_base` detaches the base's parameters (decoupled mode); head-owned modules still learn."""
        return self.trunk.logits(hidden, frozen=frozen_base)

    def iter_depth_hiddens(
        self,
        trunk_hidden: torch.Tensor,
        input_ids: torch.Tensor,
        layer_kwargs: dict | None = None,
        num_depths: int | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (i, z_i) for i = 1..num_depths over a teacher-forced sequence (the chain z_0 = h, z_{i-1} -> z_i)."""
        if self.uses_layer_kwargs and layer_kwargs is None:
            layer_kwargs = self.trunk.layer_call_kwargs()
        # heads follow the trunk's gradient-checkpointing setting: store only each depth's inputs, recompute in backward
        recompute = self.training and torch.is_grad_enabled() and self.trunk.is_checkpointing
        prev = trunk_hidden
        for depth in range(1, (num_depths or self.num_depths) + 1):
            tokens = shift_tokens(input_ids, depth, self.trunk.pad_token_id)
            kwargs = dict(prev_hidden=prev, tokens=tokens, layer_kwargs=layer_kwargs)
            if recompute:
                prev = checkpoint(self.depth_hidden, depth, trunk_hidden, use_reentrant=False, **kwargs)
            else:
                prev = self.depth_hidden(depth, trunk_hidden, **kwargs)
            yield depth, prev

    def extra_repr(self) -> str:
        return f"head_type={self.head_type!r}, num_depths={self.num_depths}"
