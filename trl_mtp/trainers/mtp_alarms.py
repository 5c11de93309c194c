"""Alarms of MTP training in RL: the three failures users of RL frameworks that train MTP heads report.

At every log the callback reads the metrics the trainer has just logged and adds one 0/1 metric per alarm whose
inputs are present (1: the alarm is on at this log):

    mtp/alarm_acceptance_drop   some depth's acceptance fell below (1 - alarm_acceptance_drop) x its running best
                                (acceptance: `spec/acceptance_depth_{i}` of speculative rollouts, else
                                `spec/acceptance_pos_{i}`, else the heads' top-1 accuracy `mtp/acc_depth_{i}`)
    mtp/alarm_entropy_collapse  the MTP loss is coupled and the policy's entropy (`policy/entropy_avg` in PPO,
                                `entropy` in GRPO / RLOO) is below alarm_entropy_fraction x its first logged value
                                (SkyRL saw entropy collapse with a joint MTP loss)
    mtp/alarm_grad_norm_ratio   the MTP loss is coupled and the heads' gradient norm is above
                                alarm_grad_norm_ratio x the policy's (`mtp/grad_norm_heads`, `mtp/grad_norm_policy`,
                                logged before clipping; in decoupled mode the two are clipped apart, so the heads
                                cannot rescale the policy's update)

An alarm that turns on logs a warning. With `alarm_action` other than "warn", the first alarm also calls the
trainer's response once: "decouple" (the MTP loss stops training the policy) or "stop_speculation" (rollouts go back
to plain sampling).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

ALARM_ACTIONS = ("warn", "decouple", "stop_speculation")
# per-depth acceptance, the first family present wins: speculative rollouts measure it, the heads' accuracy proxies it
ACCEPTANCE_FAMILIES = ("spec/acceptance_depth_", "spec/acceptance_pos_", "mtp/acc_depth_")
ENTROPY_METRICS = ("policy/entropy_avg", "entropy")


def acceptance_by_depth(logs: dict) -> dict[str, float]:
    """{metric name: value} of the first acceptance family present in `logs`; {} when none is."""
    for prefix in ACCEPTANCE_FAMILIES:
        found = {k: v for k, v in logs.items() if re.fullmatch(re.escape(prefix) + r"\d+", k) and v is not None}
        if found:
            return found
    return {}


class MTPAlarmCallback(TrainerCallback):
    """Watches the logs of an MTP trainer (see the module's docstring); `respond(action)` is the trainer's response."""

    def __init__(
        self,
        acceptance_drop: float,
        entropy_fraction: float,
        grad_norm_ratio: float,
        action: str = "warn",
        respond: Callable[[str], None] | None = None,
    ):
        if action not in ALARM_ACTIONS:
            raise ValueError(f"alarm_action={action!r}: choose one of {', '.join(ALARM_ACTIONS)}")
        self.acceptance_drop, self.entropy_fraction, self.grad_norm_ratio = (
            acceptance_drop,
            entropy_fraction,
            grad_norm_ratio,
        )
        self.action, self.respond = action, respond
        self.best_acceptance: dict[str, float] = {}
        self.initial_entropy: float | None = None
        self.on: set[str] = set()  # alarms on at the last log (a warning is logged when one turns on)
        self.responded = False

    def check(self, logs: dict, coupled: bool) -> dict[str, float]:
        """The alarm metrics of one log, and the running state updated with it."""
        alarms = {}
        acceptance = acceptance_by_depth(logs)
        if acceptance:
            dropped = [
                name
                for name, value in acceptance.items()
                if value < (1.0 - self.acceptance_drop) * self.best_acceptance.get(name, value)
            ]
            for name, value in acceptance.items():
                self.best_acceptance[name] = max(value, self.best_acceptance.get(name, value))
            alarms["mtp/alarm_acceptance_drop"] = float(bool(dropped))
        entropy = next((logs[k] for k in ENTROPY_METRICS if logs.get(k) is not None), None)
        if entropy is not None:
            if self.initial_entropy is None:
                self.initial_entropy = entropy
            collapsed = coupled and entropy < self.entropy_fraction * self.initial_entropy
            alarms["mtp/alarm_entropy_collapse"] = float(collapsed)
        heads, policy = logs.get("mtp/grad_norm_heads"), logs.get("mtp/grad_norm_policy")
        if heads is not None and policy is not None:
            alarms["mtp/alarm_grad_norm_ratio"] = float(coupled and heads > self.grad_norm_ratio * policy)
        return alarms

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        alarms = self.check(logs, coupled=getattr(args, "mode", None) == "coupled")
        # Trainer.log has already stored this log in the history; the reporting callbacks read `logs` after this one
        logs.update(alarms)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(alarms)
        now_on = {name for name, value in alarms.items() if value}
        for name in sorted(now_on - self.on):
            logger.warning("%s at step %d (logs: %s)", name, state.global_step, _inputs_of(name, logs))
        self.on = now_on
        if now_on and self.action != "warn" and not self.responded and self.respond is not None:
            self.responded = True
            logger.warning("alarm_action=%r: responding to %s", self.action, ", ".join(sorted(now_on)))
            self.respond(self.action)


def _inputs_of(alarm: str, logs: dict) -> dict:
    """The logged values an alarm read, for its warning."""
    if alarm == "mtp/alarm_acceptance_drop":
        return acceptance_by_depth(logs)
    if alarm == "mtp/alarm_entropy_collapse":
        return {k: logs[k] for k in ENTROPY_METRICS if k in logs}
    return {k: logs[k] for k in ("mtp/grad_norm_heads", "mtp/grad_norm_policy") if k in logs}
