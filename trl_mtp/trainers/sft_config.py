"""`MTPSFTConfig`: TRL's `SFTConfig` plus the MTP fields (`trl_mtp.trainers.mtp_args`)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from trl_mtp.trainers.mtp_args import MTPArguments


@dataclass
class MTPSFTConfig(MTPArguments, SFTConfig):
    r"""
    Configuration of [`MTPSFTTrainer`]: every field of TRL's `SFTConfig`, plus

    - the MTP head fields of `trl_mtp.MTPConfig`, under the same names: `head_type`, `num_mtp_heads`, `mode`,
      `decoupled_target`, `self_distill_topk`, `mtp_lambda`, `mtp_depth_decay`, `mtp_normalize_depth_weights`,
      `mtp_loss_chunk_size`, `blockwise_hidden_mult`, `share_lm_head`, `parallel_init_from_last_layer`,
      `sequential_init_from_last_layer`;
    - the schedules of `trl_mtp.schedules`: `mtp_lambda_schedule` (`constant | step | linear | cosine`),
      `mtp_lambda_end`, `mtp_lambda_step_fraction`, `mtp_every_n_steps`, `mtp_window_schedule`
      (`off | forward | reverse`), and `freeze_base` (train the heads only).

    Differences from `SFTConfig`: `bf16` defaults to True only on a GPU that supports it (TRL's True fails on CPU).
    Every field is documented in `trl-mtp sft --help`.
    """
