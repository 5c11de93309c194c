"""The MTP fields every trainer config of trl-mtp carries, defined once.

`MTPArguments` is a dataclass mixin: the fields of `MTPConfig` (same names, defaults and documentation, read from
its docstring so there is one source of truth) plus the schedule fields of `trl_mtp.schedules`. A trainer config
is `class MTPSFTConfig(MTPArguments, SFTConfig)`, so `HfArgumentParser` / `TrlParser` show every field in `--help`.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from trl_mtp.config import MTPConfig
from trl_mtp.schedules import LAMBDA_SCHEDULES, WINDOW_SCHEDULES, MTPStepPlan, mtp_step_plan, validate_schedule


def docstring_fields(cls) -> dict[str, str]:
    """Field descriptions of a TRL-style docstring ("name (`type`, defaults to ...):" then indented text)."""
    docs, name = {}, None
    for line in (cls.__doc__ or "").splitlines():
        header = re.match(r"^\s{8}(\w+) \(`", line)
        if header:
            name = header.group(1)
            docs[name] = ""
        elif name and line.startswith(" " * 12):
            docs[name] = (docs[name] + " " + line.strip()).strip()
        elif line.strip():
            name = None
    return docs


_MTP_DOCS = docstring_fields(MTPConfig)


def _mtp_config_fields() -> list[tuple]:
    fields = []
    for f in dataclasses.fields(MTPConfig):
        # argparse renders help with %-formatting
        help_text = _MTP_DOCS.get(f.name, "").replace("%", "%%")
        fields.append((f.name, f.type, dataclasses.field(default=f.default, metadata={"help": help_text})))
    return fields


_SCHEDULE_FIELDS = [
    (
        "mtp_lambda_schedule",
        str,
        dataclasses.field(
            default="constant",
            metadata={
                "help": f"Schedule of the MTP loss weight over training: {', '.join(LAMBDA_SCHEDULES)}. `step` is "
                "DeepSeek-V3's: mtp_lambda until mtp_lambda_step_fraction of the steps, then mtp_lambda_end.",
                "choices": list(LAMBDA_SCHEDULES),
            },
        ),
    ),
    (
        "mtp_lambda_end",
        float,
        dataclasses.field(
            default=0.1,
            metadata={
                "help": "Final MTP loss weight of the step, linear and cosine schedules (DeepSeek-V3: 0.3 -> 0.1)."
            },
        ),
    ),
    (
        "mtp_lambda_step_fraction",
        float,
        dataclasses.field(
            default=0.675,
            metadata={
                "help": "Fraction of training after which the `step` schedule switches (DeepSeek-V3: 10T of 14.8T tokens)."
            },
        ),
    ),
    (
        "mtp_every_n_steps",
        int,
        dataclasses.field(
            default=1, metadata={"help": "Frequency: apply the MTP loss only on optimizer steps s with s %% n == 0."}
        ),
    ),
    (
        "mtp_window_schedule",
        str,
        dataclasses.field(
            default="off",
            metadata={
                "help": f"Window curriculum: {', '.join(WINDOW_SCHEDULES)}. `forward` trains heads 1..k with k growing "
                "1 -> num_mtp_heads over training; `reverse` shrinks num_mtp_heads -> 1.",
                "choices": list(WINDOW_SCHEDULES),
            },
        ),
    ),
    (
        "freeze_base",
        bool,
        dataclasses.field(
            default=False,
            metadata={"help": "Train the heads only (Medusa-1 style): every base-model parameter is frozen."},
        ),
    ),
]

_MTPFields = dataclasses.make_dataclass("_MTPFields", _mtp_config_fields() + _SCHEDULE_FIELDS)


class MTPArguments(_MTPFields):
    """MTP fields of a trainer config (see `MTPConfig` and `trl_mtp.schedules`), validated on construction."""

    def __post_init__(self):
        # TRL defaults bf16 to True, which fails on CPUs without bf16 support: default to it only where it runs.
        if getattr(self, "bf16", False) is None and not getattr(self, "fp16", False):
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        self.mtp_config()  # raises a ValueError naming the bad MTP field
        validate_schedule(
            mtp_lambda_schedule=self.mtp_lambda_schedule,
            mtp_lambda_end=self.mtp_lambda_end,
            mtp_lambda_step_fraction=self.mtp_lambda_step_fraction,
            mtp_every_n_steps=self.mtp_every_n_steps,
            mtp_window_schedule=self.mtp_window_schedule,
        )
        super().__post_init__()

    def mtp_config(self) -> MTPConfig:
        """The `MTPConfig` these arguments describe."""
        return MTPConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MTPConfig)})

    def mtp_step_plan(self, step: int, total_steps: int) -> MTPStepPlan:
        """Lambda, window and on/off of the MTP loss at optimizer step `step` of `total_steps`."""
        return mtp_step_plan(
            step,
            total_steps,
            num_heads=self.num_mtp_heads,
            mtp_lambda=self.mtp_lambda,
            mtp_lambda_end=self.mtp_lambda_end,
            mtp_lambda_schedule=self.mtp_lambda_schedule,
            mtp_lambda_step_fraction=self.mtp_lambda_step_fraction,
            mtp_every_n_steps=self.mtp_every_n_steps,
            mtp_window_schedule=self.mtp_window_schedule,
        )


@dataclasses.dataclass
class MTPRLArguments(MTPArguments):
    """MTP fields of the on-policy RL configs: as `MTPArguments`, but `mode` defaults to `"decoupled"`, so the policy
    is driven by the RL loss alone and the heads learn to predict the policy's own tokens (they keep drafting well
    for speculative rollouts as the policy moves)."""

    mode: str = dataclasses.field(
        default="decoupled",
        metadata={
            "help": "`decoupled` (the RL default: only the heads learn from the MTP loss) or `coupled` (it trains the "
            "policy too)."
        },
    )
