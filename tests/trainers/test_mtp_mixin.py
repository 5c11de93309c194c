"""The argument check every trainer runs first (`MTPTrainerMixin._checked_args`)."""

from __future__ import annotations

import pytest

from trl_mtp import (
    MTPDPOConfig,
    MTPDPOTrainer,
    MTPGRPOTrainer,
    MTPPPOTrainer,
    MTPRLOOTrainer,
    MTPSFTConfig,
    MTPSFTTrainer,
    WorldModelPPOTrainer,
)
from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin

# trainer -> the positional arguments it needs before `args` (never reached: the check runs first)
TRAINERS = {
    MTPSFTTrainer: {},
    MTPGRPOTrainer: {"reward_funcs": []},
    MTPRLOOTrainer: {"reward_funcs": []},
    MTPDPOTrainer: {"ref_model": None},
    MTPPPOTrainer: {},
    WorldModelPPOTrainer: {},
}


def another_config(trainer_class, output_dir):
    """A config of another trainer: what a user who copied the wrong line passes."""
    config_class = MTPDPOConfig if trainer_class is MTPSFTTrainer else MTPSFTConfig
    return config_class(output_dir=str(output_dir), report_to=[])


@pytest.mark.parametrize("trainer_class", list(TRAINERS), ids=lambda c: c.__name__)
def test_each_trainer_refuses_another_config_before_loading_a_model(trainer_class, tmp_path):
    wrong = another_config(trainer_class, tmp_path)
    message = f"args={type(wrong).__name__}: {trainer_class.__name__} needs a {trainer_class.config_class.__name__}"
    # model=object() would fail to load: the error names args, so the check ran before the model
    with pytest.raises(ValueError, match=f"^{message}$"):
        trainer_class(model=object(), args=wrong, **TRAINERS[trainer_class])
    default = trainer_class._checked_args(None)
    assert type(default) is trainer_class.config_class
    assert default.output_dir == trainer_class.default_output_dir


def test_world_model_ppo_refuses_plain_ppo_config(tmp_path):
    """A subclass's config class is its own: plain PPO's config lacks the world model's fields."""
    plain = MTPPPOTrainer.config_class(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match="args=MTPPPOConfig: WorldModelPPOTrainer needs a WorldModelPPOConfig"):
        WorldModelPPOTrainer(model=object(), args=plain)
    assert MTPPPOTrainer._checked_args(plain) is plain


def test_a_trainer_without_the_check_fails_the_test(monkeypatch, tmp_path):
    """The broken implementation (the check accepts anything): the wrong config reaches the model loading, whose
    error does not name `args`, so the parametrized test above would fail."""
    monkeypatch.setattr(MTPTrainerMixin, "_checked_args", classmethod(lambda cls, args: args))
    with pytest.raises(ValueError) as err:
        MTPSFTTrainer(model=object(), args=another_config(MTPSFTTrainer, tmp_path))
    assert not str(err.value).startswith("args=")
