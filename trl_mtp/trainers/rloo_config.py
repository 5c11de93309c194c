"""`MTPRLOOConfig`: TRL's `RLOOConfig` plus the MTP fields (`trl_mtp.trainers.mtp_args`)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import RLOOConfig

from trl_mtp.trainers.mtp_args import MTPRLArguments


@dataclass
class MTPRLOOConfig(MTPRLArguments, RLOOConfig):
    r"""
    Configuration of [`MTPRLOOTrainer`]: every field of TRL's `RLOOConfig` plus the MTP head and schedule fields,
    under the same names as in `MTPSFTConfig` (see docs/trainers/sft.md), with `mode` defaulting to
    `"decoupled"` (`MTPRLArguments`). `bf16` defaults to True only on a GPU that supports it.
    """
