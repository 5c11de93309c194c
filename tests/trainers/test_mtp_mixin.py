"""The trainers' shared set-up: modules they build before TRL's Trainer seeds the run come from the run's seed."""

from __future__ import annotations

import torch

from trl_mtp import MTPSFTConfig, WorldModelPPOConfig, WorldModelPPOTrainer
from trl_mtp.tasks.registry import get_task
from trl_mtp.trainers.mtp_mixin import load_mtp_model


def _states_after_rng_use(build, draws: int) -> dict[str, torch.Tensor]:
    """`build()`'s parameters after `draws` numbers were drawn from the global RNG (what earlier runs of the same
    process, e.g. an experiment shard, leave behind)."""
    torch.rand(draws)
    return {k: v.clone() for k, v in build().state_dict().items()}


def test_new_heads_depend_on_the_seed_only(tiny_model, tmp_path):
    """Heads re-initialised the base model's way (not copies of its last layer) draw from the RNG."""
    def heads(seed):
        base = tiny_model()  # seeded itself: the RNG use below comes after it
        args = MTPSFTConfig(output_dir=str(tmp_path), num_mtp_heads=2, head_type="sequential", seed=seed,
                            sequential_init_from_last_layer=False)
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
        args = WorldModelPPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, seed=0,
                                   num_mtp_heads=2, head_type="sequential", report_to=[], disable_tqdm=True,
                                   dataloader_pin_memory=False)
        return lambda: WorldModelPPOTrainer(base, args, train_dataset=prompts, processing_class=tokenizer,
                                            reward_funcs=lambda completions, **kw: [0.0] * len(completions)).model

    first, second = _states_after_rng_use(trainer_model(), 0), _states_after_rng_use(trainer_model(), 1000)
    assert any("world_model" in k for k in first) and any("value_head" in k for k in first)
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
