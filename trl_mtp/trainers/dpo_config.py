"""`MTPDPOConfig`: TRL's `DPOConfig` plus the MTP fields (`trl_mtp.trainers.mtp_args`)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import DPOConfig

from trl_mtp.trainers.mtp_args import MTPArguments


@dataclass
class MTPDPOConfig(MTPArguments, DPOConfig):
    r"""
    Configuration of [`MTPDPOTrainer`]: every field of TRL's `DPOConfig` plus the MTP head and schedule fields,
    under the same names as in `MTPSFTConfig` (see docs/trainers/sft.md). `bf16` defaults to True only on a GPU
    that supports it.
    """
