"""MTP head families, one file each, and the registry that builds them from an `MTPConfig`."""

from __future__ import annotations

from trl_mtp.config import MTPConfig
from trl_mtp.heads.base import MTPHeads, shift_tokens
from trl_mtp.heads.blockwise import BlockwiseHeads
from trl_mtp.heads.medusa import MedusaHeads
from trl_mtp.heads.parallel import ParallelHeads
from trl_mtp.heads.sequential import SequentialHeads
from trl_mtp.heads.trunk import Trunk

# family name (`MTPConfig.head_type`, one of `config.HEAD_TYPES`) -> its class; each class names itself
HEAD_FAMILIES: dict[str, type[MTPHeads]] = {
    family.head_type: family for family in (BlockwiseHeads, ParallelHeads, SequentialHeads, MedusaHeads)
}


def build_heads(trunk: Trunk, config: MTPConfig) -> MTPHeads:
    """The head family `config.head_type` over `trunk`, on the base model's device and dtype."""
    heads = HEAD_FAMILIES[config.head_type](trunk, config)
    weight = trunk.lm_head.weight
    return heads.to(device=weight.device, dtype=weight.dtype)


__all__ = [
    "HEAD_FAMILIES",
    "MTPHeads",
    "BlockwiseHeads",
    "ParallelHeads",
    "SequentialHeads",
    "MedusaHeads",
    "Trunk",
    "build_heads",
    "shift_tokens",
]
