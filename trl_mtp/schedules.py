"""Schedules and tricks of MTP training: loss weight, frequency and window curriculum.

Everything here is a pure function of the optimizer step and the run length, so a run resumed from a
checkpoint (which restores `global_step`) continues every schedule exactly where it stopped.

- lambda schedule (`mtp_lambda_schedule`):
    constant : lambda(s) = lambda_0
    step     : lambda_0 until s = f * S, then lambda_1        (DeepSeek-V3: 0.3 -> 0.1 after 10T of 14.8T tokens)
    linear   : lambda_0 + (lambda_1 - lambda_0) * s / S
    cosine   : lambda_1 + (lambda_0 - lambda_1) * (1 + cos(pi * s / S)) / 2
    adaptive : lambda_0 is a ceiling; the trainer sets the weight of each micro-batch below it from the gradients
               (coupled mode; the rule is in `trl_mtp.trainers.mtp_targets`)
- frequency (`mtp_every_n_steps` = n): the MTP loss is applied at steps s with s % n == 0.
- window curriculum (`mtp_window_schedule`), with D = num_mtp_heads and progress p = s / S:
    off     : k = D
    forward : k = min(D, 1 + floor(p * D))   grow 1 -> D (Aynetdinov & Akbik 2025's forward curriculum)
    reverse : k = max(1, D - floor(p * D))   shrink D -> 1
  Only heads 1..k are trained at that step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LAMBDA_SCHEDULES = ("constant", "step", "linear", "cosine", "adaptive")
WINDOW_SCHEDULES = ("off", "forward", "reverse")


@dataclass(frozen=True)
class MTPStepPlan:
    """What the MTP loss does at one optimizer step."""

    mtp_lambda: float  # weight of the MTP loss
    window: int  # number of heads trained (1..D)
    apply: bool  # False on steps skipped by the frequency setting


def validate_schedule(
    *,
    mtp_lambda_schedule: str,
    mtp_lambda_end: float,
    mtp_lambda_step_fraction: float,
    mtp_every_n_steps: int,
    mtp_window_schedule: str,
) -> None:
    """Raise a ValueError naming the first bad schedule setting."""
    if mtp_lambda_schedule not in LAMBDA_SCHEDULES:
        raise ValueError(f"mtp_lambda_schedule={mtp_lambda_schedule!r}: choose one of {', '.join(LAMBDA_SCHEDULES)}")
    if not (isinstance(mtp_lambda_end, (int, float)) and math.isfinite(mtp_lambda_end) and mtp_lambda_end >= 0):
        raise ValueError(f"mtp_lambda_end={mtp_lambda_end!r}: must be a finite number >= 0")
    if not 0.0 <= mtp_lambda_step_fraction <= 1.0:
        raise ValueError(f"mtp_lambda_step_fraction={mtp_lambda_step_fraction!r}: must be in [0, 1]")
    if not isinstance(mtp_every_n_steps, int) or isinstance(mtp_every_n_steps, bool) or mtp_every_n_steps < 1:
        raise ValueError(f"mtp_every_n_steps={mtp_every_n_steps!r}: must be an integer >= 1")
    if mtp_window_schedule not in WINDOW_SCHEDULES:
        raise ValueError(f"mtp_window_schedule={mtp_window_schedule!r}: choose one of {', '.join(WINDOW_SCHEDULES)}")


def mtp_lambda_at(
    step: int, total_steps: int, *, start: float, end: float, schedule: str, step_fraction: float = 0.675
) -> float:
    """The MTP loss weight at optimizer step `step` of `total_steps`."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule in ("constant", "adaptive"):  # adaptive: the ceiling
        return start
    if schedule == "step":
        return start if progress < step_fraction else end
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"mtp_lambda_schedule={schedule!r}: choose one of {', '.join(LAMBDA_SCHEDULES)}")


def mtp_window_at(step: int, total_steps: int, *, num_heads: int, schedule: str) -> int:
    """How many heads (1..D) are trained at optimizer step `step` of `total_steps`."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    grown = math.floor(progress * num_heads)
    if schedule == "off":
        return num_heads
    if schedule == "forward":
        return min(num_heads, 1 + grown)
    if schedule == "reverse":
        return max(1, num_heads - grown)
    raise ValueError(f"mtp_window_schedule={schedule!r}: choose one of {', '.join(WINDOW_SCHEDULES)}")


def mtp_step_plan(
    step: int,
    total_steps: int,
    *,
    num_heads: int,
    mtp_lambda: float,
    mtp_lambda_end: float = 0.1,
    mtp_lambda_schedule: str = "constant",
    mtp_lambda_step_fraction: float = 0.675,
    mtp_every_n_steps: int = 1,
    mtp_window_schedule: str = "off",
) -> MTPStepPlan:
    """The full plan for one step: weight, window and whether the MTP loss applies at all."""
    return MTPStepPlan(
        mtp_lambda=mtp_lambda_at(
            step,
            total_steps,
            start=mtp_lambda,
            end=mtp_lambda_end,
            schedule=mtp_lambda_schedule,
            step_fraction=mtp_lambda_step_fraction,
        ),
        window=mtp_window_at(step, total_steps, num_heads=num_heads, schedule=mtp_window_schedule),
        apply=step % mtp_every_n_steps == 0,
    )
