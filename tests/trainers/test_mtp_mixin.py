"""The trainers' shared set-up: the argument check every trainer runs first (`MTPTrainerMixin._checked_args`), and
modules they build before TRL's Trainer seeds the run come from the run's seed."""

from __future__ import annotations

import pytest
import torch

from trl_mtp import (
    MTPDPOConfig,
    MTPDPOTrainer,
    MTPGRPOTrainer,
    MTPPPOTrainer,
    MTPRLOOTrainer,
    MTPSFTConfig,
    MTPSFTTrainer,
    WorldModelPPOConfig,
    WorldModelPPOTrainer,
)
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin, load_mtp_model

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


def _states_after_rng_use(build, draws: int) -> dict[str, torch.Tensor]:
    """`build()`'s parameters after `draws` numbers were drawn from the global RNG (what earlier runs of the same
    process, e.g. an experiment shard, leave behind)."""
    torch.rand(draws)
    return {k: v.clone() for k, v in build().state_dict().items()}


def test_new_heads_depend_on_the_seed_only(tiny_model, tmp_path):
    """Heads re-initialised the base model's way (not copies of its last layer) draw from the RNG."""

    def heads(seed):
        base = tiny_model()  # seeded itself: the RNG use below comes after it
        args = MTPSFTConfig(
            output_dir=str(tmp_path),
            num_mtp_heads=2,
            head_type="sequential",
            seed=seed,
            sequential_init_from_last_layer=False,
        )
        return lambda: load_mtp_model(base, args).heads

    first, second = _states_after_rng_use(heads(0), 0), _states_after_rng_use(heads(0), 1000)
    assert first.keys() == second.keys() and len(first) > 0
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _states_after_rng_use(heads(1), 0)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # the seed does reach the initialisation


def test_world_model_ppo_modules_depend_on_the_seed_only(tiny_model, tokenizer, tmp_path):
    """Heads, two-hot critic and world model are all built before `Trainer.__init__` seeds the run."""
    prompts = get_task("copy", length=3).train(8)

    def trainer_model():
        base = tiny_model()
        args = WorldModelPPOConfig(
            output_dir=str(tmp_path),
            max_steps=1,
            per_device_train_batch_size=4,
            seed=0,
            num_mtp_heads=2,
            head_type="sequential",
            report_to=[],
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        return lambda: (
            WorldModelPPOTrainer(
                base,
                args,
                train_dataset=prompts,
                processing_class=tokenizer,
                reward_funcs=lambda completions, **kw: [0.0] * len(completions),
            ).model
        )

    first, second = _states_after_rng_use(trainer_model(), 0), _states_after_rng_use(trainer_model(), 1000)
    assert any("world_model" in k for k in first) and any("value_head" in k for k in first)
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
