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
from trl_mtp.trainers.mtp_alarms import ALARM_ACTIONS
from trl_mtp.trainers.mtp_targets import SAMPLE_FILTERS


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
                "DeepSeek-V3's: mtp_lambda until mtp_lambda_step_fraction of the steps, then mtp_lambda_end. "
                "`adaptive` (coupled mode; in the spirit of OCC, Wang et al. 2026): each micro-batch's weight is "
                "<dL_policy/dh, dL_mtp/dh> / ||dL_mtp/dh||^2 on the trunk's last hidden state h, clipped to "
                "[0, mtp_lambda], so an MTP gradient against the policy's gets no weight.",
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
        if self.mtp_lambda_schedule == "adaptive" and self.mode != "coupled":
            raise ValueError(
                f"mtp_lambda_schedule='adaptive' with mode={self.mode!r}: the adaptive weight balances the MTP "
                "loss's pull on the trunk against the policy loss's, which only exists in mode='coupled'"
            )
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
class RLHeadArguments:
    """What the heads learn from during RL, speculative rollouts, and the alarms that watch them
    (`trl_mtp.trainers.mtp_targets`, `trl_mtp.trainers.speculative_rollouts`, `trl_mtp.trainers.mtp_alarms`): fields
    of the RL configs (PPO, GRPO, RLOO), mixed in before `MTPArguments`."""

    mtp_sample_filter: str = dataclasses.field(
        default="all",
        metadata={
            "help": f"Which samples the heads learn from: {', '.join(SAMPLE_FILTERS)}. `positive_advantage` "
            "(NeMo-RL's mtp_positive_only): only the tokens of samples whose advantage is > 0 (PPO: the mean of the "
            "sample's token advantages).",
            "choices": list(SAMPLE_FILTERS),
        },
    )
    speculative_rollouts: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Sample the rollouts with self-speculative decoding from the MTP heads "
            "(`MTPForCausalLM.speculative_generate`, `trl_mtp.trainers.speculative_rollouts`): the heads draft, the "
            "policy verifies; lossless (greedy: the same tokens, sampling: the same distribution, by speculative "
            "rejection sampling), so the RL loss sees the rollouts plain sampling would give. Logs "
            "`spec/mean_accepted_length`, `spec/acceptance_pos_{i}`, `spec/acceptance_depth_{i}` (draft i kept once "
            "verified), `spec/draft_tokens` (drafts per round) and `spec/tokens_per_s`. GRPO / RLOO: the "
            "transformers generation path only (not vLLM, continuous batching, a rollout_func or a vision model)."
        },
    )
    adaptive_draft_tokens: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "With speculative_rollouts: each decoding round drafts 0..D tokens, as many as maximise expected "
            "tokens per second from running per-depth acceptance and the measured round time at the current batch "
            "size (`trl_mtp.adaptive_drafting`; 0 is plain decoding, chosen where speculation does not pay). One "
            "planner per process (not saved in checkpoints) for the whole run, so its estimates follow the policy as "
            "it drifts. Lossless for every choice."
        },
    )
    mtp_alarms: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Watch the logs for the failures of MTP in RL (acceptance drop, entropy collapse while coupled, "
            "heads' gradient norm dominating the policy's) and log `mtp/alarm_*` (0/1) at every log."
        },
    )
    alarm_acceptance_drop: float = dataclasses.field(
        default=0.2,
        metadata={
            "help": "Acceptance alarm: fires when some depth's acceptance (speculative rollouts' acceptance, else the "
            "heads' top-1 accuracy) falls below (1 - this) x its running best."
        },
    )
    alarm_entropy_fraction: float = dataclasses.field(
        default=0.1,
        metadata={
            "help": "Entropy alarm: fires when, in coupled mode, the policy's entropy is below this fraction of its "
            "first logged value."
        },
    )
    alarm_grad_norm_ratio: float = dataclasses.field(
        default=10.0,
        metadata={
            "help": "Gradient alarm: fires when, in coupled mode, the heads' gradient norm is above this multiple of "
            "the policy's (both before clipping)."
        },
    )
    alarm_action: str = dataclasses.field(
        default="warn",
        metadata={
            "help": f"What the first alarm does besides warning: {', '.join(ALARM_ACTIONS)}. `decouple` switches "
            "the MTP loss to mode='decoupled'; `stop_speculation` switches rollouts to plain sampling.",
            "choices": list(ALARM_ACTIONS),
        },
    )

    def __post_init__(self):
        def bad(name: str, why: str):
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if self.mtp_sample_filter not in SAMPLE_FILTERS:
            bad("mtp_sample_filter", f"choose one of {', '.join(SAMPLE_FILTERS)}")
        for name in ("alarm_acceptance_drop", "alarm_entropy_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                bad(name, "must be in (0, 1)")
        if not self.alarm_grad_norm_ratio > 0.0:
            bad("alarm_grad_norm_ratio", "must be > 0")
        if self.alarm_action not in ALARM_ACTIONS:
            bad("alarm_action", f"choose one of {', '.join(ALARM_ACTIONS)}")
        if self.alarm_action == "decouple" and self.mode != "coupled":
            bad("alarm_action", f"decoupling needs mode='coupled' (mode={self.mode!r})")
        for backend in ("use_vllm", "use_transformers_continuous_batching"):  # GRPO / RLOO generation backends
            if self.speculative_rollouts and getattr(self, backend, False):
                bad(backend, "speculative_rollouts replace TRL's transformers `generate` path only; turn one off")
        if self.adaptive_draft_tokens and not self.speculative_rollouts:
            bad("adaptive_draft_tokens", "drafting adapts only with speculative_rollouts=True")
        if self.alarm_action == "stop_speculation" and not self.speculative_rollouts:
            bad("alarm_action", "stopping speculation needs speculative_rollouts=True")
        super().__post_init__()


@dataclasses.dataclass
class MTPRLArguments(RLHeadArguments, MTPArguments):
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
