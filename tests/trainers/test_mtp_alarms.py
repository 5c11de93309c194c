"""The alarms fire exactly when they should (driven by synthetic logs), respond once when asked to, and appear in a
real trainer's logs."""

from __future__ import annotations

import logging
import math
import types

import pytest
from transformers import TrainerControl, TrainerState

from trl_mtp import MTPGRPOConfig, MTPPPOConfig, MTPPPOTrainer
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.trainers import mtp_alarms
from trl_mtp.trainers.mtp_alarms import MTPAlarmCallback
from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin


def alarm(**overrides) -> MTPAlarmCallback:
    return MTPAlarmCallback(**{"acceptance_drop": 0.2, "entropy_fraction": 0.1, "grad_norm_ratio": 10.0, **overrides})


def fired(callback: MTPAlarmCallback, name: str, logs: list[dict], coupled: bool = True) -> list[float]:
    return [callback.check(entry, coupled).get(name) for entry in logs]


def test_acceptance_alarm_compares_with_the_running_best():
    """Best 0.6 at the second log: 0.49 is within 20% of it (>= 0.48), 0.47 is not. Against the first value (0.5)
    instead of the running best, 0.47 would pass (>= 0.4)."""
    logs = [{"spec/acceptance_pos_1": v, "spec/acceptance_pos_2": 0.3} for v in (0.5, 0.6, 0.49, 0.47, 0.7)]
    assert fired(alarm(), "mtp/alarm_acceptance_drop", logs) == [0.0, 0.0, 0.0, 1.0, 0.0]
    depth_2 = [{"spec/acceptance_pos_1": 0.5, "spec/acceptance_pos_2": v} for v in (0.3, 0.25, 0.23)]
    assert fired(alarm(), "mtp/alarm_acceptance_drop", depth_2) == [0.0, 0.0, 1.0]  # any depth


def test_acceptance_alarm_reads_the_measured_acceptance_first():
    """Speculative rollouts' acceptance wins over the heads' accuracy; the accuracy is the fallback."""
    logs = [{"spec/acceptance_depth_1": 0.8, "mtp/acc_depth_1": v} for v in (0.9, 0.1)]
    assert fired(alarm(), "mtp/alarm_acceptance_drop", logs) == [0.0, 0.0]
    assert fired(alarm(), "mtp/alarm_acceptance_drop", [{"mtp/acc_depth_1": v} for v in (0.9, 0.1)]) == [0.0, 1.0]
    assert fired(alarm(), "mtp/alarm_acceptance_drop", [{"loss": 1.0}]) == [None]  # no input, no metric


@pytest.mark.parametrize("metric", ["policy/entropy_avg", "entropy"])
def test_entropy_alarm_fires_below_the_fraction_while_coupled_only(metric):
    logs = [{metric: v} for v in (2.0, 1.0, 0.2, 0.19)]  # 10% of the first value is 0.2
    assert fired(alarm(), "mtp/alarm_entropy_collapse", logs) == [0.0, 0.0, 0.0, 1.0]
    assert fired(alarm(), "mtp/alarm_entropy_collapse", logs, coupled=False) == [0.0] * 4


def test_grad_norm_alarm_fires_above_the_ratio_while_coupled_only():
    logs = [{"mtp/grad_norm_heads": h, "mtp/grad_norm_policy": 1.0} for h in (5.0, 10.0, 11.0)]
    assert fired(alarm(), "mtp/alarm_grad_norm_ratio", logs) == [0.0, 0.0, 1.0]
    assert fired(alarm(), "mtp/alarm_grad_norm_ratio", logs, coupled=False) == [0.0] * 3


def test_on_log_records_warns_on_the_rising_edge_and_responds_once(caplog):
    responses = []
    callback = alarm(action="decouple", respond=responses.append)
    state, args = TrainerState(), types.SimpleNamespace(mode="coupled")
    with caplog.at_level(logging.WARNING, logger=mtp_alarms.__name__):
        for step, entropy in enumerate((2.0, 0.1, 0.1, 1.0, 0.1), start=1):
            state.global_step = step
            logs = {"entropy": entropy}
            state.log_history.append({**logs, "step": step})  # what Trainer.log stores before calling on_log
            callback.on_log(args, state, TrainerControl(), logs=logs)
            assert logs["mtp/alarm_entropy_collapse"] == state.log_history[-1]["mtp/alarm_entropy_collapse"]
    assert [h["mtp/alarm_entropy_collapse"] for h in state.log_history] == [0.0, 1.0, 1.0, 0.0, 1.0]
    warnings = [r.getMessage() for r in caplog.records if "mtp/alarm_entropy_collapse at step" in r.getMessage()]
    assert [w.split(" at step ")[1].split()[0] for w in warnings] == ["2", "5"]  # each time it turns on
    assert responses == ["decouple"]  # the first alarm only


def test_responses_decouple_the_heads_and_stop_speculation(tiny_model, tmp_path):
    from trl_mtp import MTPForCausalLM

    args = MTPGRPOConfig(output_dir=str(tmp_path), mode="coupled", alarm_action="decouple")
    trainer = types.SimpleNamespace(args=args, mtp_model=MTPForCausalLM.from_base(tiny_model(), args.mtp_config()))
    MTPTrainerMixin.respond_to_alarm(trainer, "decouple")
    assert args.mode == "decoupled" and trainer.mtp_model.mtp_config.mode == "decoupled"
    ppo_args = MTPPPOConfig(output_dir=str(tmp_path), speculative_rollouts=True, alarm_action="stop_speculation")
    MTPTrainerMixin.respond_to_alarm(types.SimpleNamespace(args=ppo_args), "stop_speculation")
    assert ppo_args.speculative_rollouts is False


def test_bad_alarm_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="alarm_action='decouple'"):
        MTPGRPOConfig(output_dir=str(tmp_path), alarm_action="decouple")  # RL default mode: already decoupled
    with pytest.raises(ValueError, match="alarm_entropy_fraction=0.0"):
        MTPGRPOConfig(output_dir=str(tmp_path), alarm_entropy_fraction=0.0)
    with pytest.raises(ValueError, match="alarm_action='panic'"):
        MTPAlarmCallback(0.2, 0.1, 10.0, action="panic")


@pytest.mark.slow
def test_coupled_ppo_logs_alarms_grad_norms_and_the_adaptive_lambda(tiny_model, tokenizer, ppo_args):
    """A short coupled PPO run with the alarms on, speculative rollouts and the adaptive weight: every log carries
    the alarm metrics (0/1), the per-group gradient norms they read, and a weight within [0, mtp_lambda]."""
    args = ppo_args(
        mode="coupled",
        mtp_lambda=0.5,
        mtp_lambda_schedule="adaptive",
        speculative_rollouts=True,
        mtp_alarms=True,
    )
    trainer = MTPPPOTrainer(
        tiny_model(),
        args=args,
        train_dataset=get_task("copy", length=3).train(8),
        processing_class=tokenizer,
        reward_funcs=lambda completions, **kw: [float(len(c) % 2) for c in completions],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "mtp/loss" in h]
    assert len(logs) == 2
    for entry in logs:
        for name in ("mtp/alarm_acceptance_drop", "mtp/alarm_entropy_collapse", "mtp/alarm_grad_norm_ratio"):
            assert entry[name] in (0.0, 1.0), name
        assert math.isfinite(entry["mtp/grad_norm_heads"]) and entry["mtp/grad_norm_policy"] > 0
        assert 0.0 <= entry["mtp/lambda"] <= 0.5
