"""World-model PPO (PPOTrainer with `world_model=True`): wiring, gradient routing, imagination without policy
gradients, return normalisation, save/resume, and an end-to-end CLI run with every part switched on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from trl_mtp import PPOConfig, PPOTrainer
from trl_mtp.tasks.registry import get_task
from trl_mtp.world_model import PercentileNormalizer, TwoHotValueHead, WorldModel

WM_METRICS = ("wm/latent_cos_depth_1", "wm/latent_cos_depth_2", "wm/token_kl_depth_1", "wm/token_kl_depth_2",
              "wm/reward_pred_error", "wm/imagined_return", "wm/return_scale", "val/explained_variance",
              "loss/wm_latent", "loss/wm_token_kl", "loss/wm_reward", "loss/wm_continue", "loss/wm_imagination",
              "loss/wm_slow_critic", "loss/wm_discrete_kl")


def first_token_parity(prompts, completions, completion_ids, **kwargs):
    return [float(ids[0] % 2) if ids else 0.0 for ids in completion_ids]


@pytest.fixture(scope="module")
def prompts():
    return get_task("copy", length=3).train(16)


@pytest.fixture
def wm_trainer(tmp_path, tiny_model, tokenizer, prompts):
    def make(**overrides):
        defaults = dict(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                        num_mini_batches=1, num_ppo_epochs=1, response_length=5, learning_rate=1e-3,
                        temperature=1.0, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
                        num_mtp_heads=2, dataloader_pin_memory=False, head_type="sequential", world_model=True,
                        wm_discrete_latent=True, logging_steps=1)
        args = PPOConfig(**{**defaults, **overrides})
        return PPOTrainer(tiny_model(), args, train_dataset=prompts, processing_class=tokenizer,
                          reward_funcs=first_token_parity)

    return make


def grads_of(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_modules_and_metrics(wm_trainer):
    trainer = wm_trainer()
    model = trainer.model
    assert isinstance(model.world_model, WorldModel) and model.world_model.dynamics_kind == "sequential"
    assert isinstance(model.value_head, TwoHotValueHead) and isinstance(model.return_normalizer, PercentileNormalizer)
    assert model.world_model.dynamics is None  # the sequential heads are the prior: no second copy of them
    trainer.train()
    logged = {k for h in trainer.state.log_history for k in h}
    assert set(WM_METRICS) <= logged, set(WM_METRICS) - logged
    mlp = wm_trainer(head_type="blockwise", wm_critic="scalar", wm_return_norm="whiten", wm_discrete_latent=False)
    assert mlp.model.world_model.dynamics_kind == "mlp" and mlp.model.return_normalizer is None
    with pytest.raises(ValueError, match="head_type='sequential'"):
        wm_trainer(head_type="blockwise", wm_dynamics="sequential")
    with pytest.raises(ValueError, match="reward and continue"):
        wm_trainer(wm_reward_head=False)


def _one_batch(trainer):
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    from transformers import TrainerState

    trainer.state = TrainerState()
    trainer.state.max_steps = 1
    trainer.model_wrapped = trainer.model
    return trainer.make_rollouts(0)


@pytest.mark.parametrize("routing", ["decoupled", "coupled"])
def test_gradient_routing_and_imagination_gives_no_policy_gradient(wm_trainer, routing):
    """Decoupled: no world-model term reaches the policy; coupled: the latent loss does, the imagination term never
    reaches the LM head through imagined tokens (its only gradient is the critic's, on real states)."""
    trainer = wm_trainer(wm_gradient=routing)
    rollouts = _one_batch(trainer)
    policy = trainer.mtp_model.base_model
    policy_params = {n for n, _ in policy.named_parameters() if not n.startswith("mtp_heads.")}
    terms, _ = trainer.compute_losses(trainer.model, rollouts)
    wm_terms = [name for name in terms if name.startswith("wm_")]
    assert {"wm_latent", "wm_token_kl", "wm_discrete_kl", "wm_reward", "wm_continue", "wm_imagination",
            "wm_slow_critic"} <= set(wm_terms)
    for name in wm_terms:
        trainer.model.zero_grad(set_to_none=True)
        terms, _ = trainer.compute_losses(trainer.model, rollouts)
        terms[name].backward()
        touched = set(grads_of(policy)) & policy_params
        if routing == "decoupled":
            assert not touched, (name, sorted(touched)[:3])
        elif name == "wm_latent":
            assert touched  # coupled: the representation gradient reaches the trunk
        if name == "wm_imagination":
            assert grads_of(trainer.model.value_head)  # the critic learns from the imagined targets
            assert "lm_head.weight" not in touched or routing == "coupled" and policy.config.tie_word_embeddings


def test_imagined_rollouts_carry_no_graph(wm_trainer):
    trainer = wm_trainer(wm_imagination_horizon=3)
    rollouts = _one_batch(trainer)
    model = trainer.model
    with torch.enable_grad():
        model(rollouts.query_responses, rollouts.attention_mask)
        hidden = trainer.mtp_model.trunk.hidden
        assert hidden.requires_grad
        start, trajectory = model.world_model.imagine(hidden, rollouts.query_responses, model.value_head,
                                                      return_trajectory=True)
    assert not start.requires_grad and start.grad_fn is None  # nothing to backpropagate: no policy gradient
    assert trajectory.shape == (*rollouts.query_responses.shape, 4)  # a_0 from the policy, then 3 from the heads
    assert trainer.mtp_model.trunk.hidden is hidden  # the capture of the update's forward is kept


def test_percentile_normalisation_replaces_whitening(wm_trainer):
    trainer = wm_trainer(wm_return_norm="percentile")
    rollouts = _one_batch(trainer)
    raw, _ = __import__("trl_mtp.trainers.ppo_core", fromlist=["gae_advantages"]).gae_advantages(
        rollouts.rewards, rollouts.values, rollouts.mask, 1.0, 0.95)
    scale = trainer.model.return_normalizer.scale()
    assert torch.allclose(rollouts.advantages, (raw / scale).masked_fill(~rollouts.mask, 0.0))
    assert trainer._metrics["train"]["wm/return_scale"]


def test_save_and_resume_world_model(wm_trainer, tmp_path):
    trainer = wm_trainer(save_strategy="steps", save_steps=1, max_steps=1)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "world_model.safetensors").is_file()
    saved = {k: v.clone() for k, v in trainer.model.world_model.state_dict().items()}
    resumed = wm_trainer(save_strategy="no", max_steps=1)
    resumed._load_from_checkpoint(str(checkpoint))
    for key, value in resumed.model.world_model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(resumed.model.return_normalizer.high, trainer.model.return_normalizer.high)


@pytest.mark.slow
def test_cli_world_model_every_part_on(tmp_path):
    """`trl-mtp ppo` on the embedded default with every world-model part switched on trains end to end."""
    cli = os.path.join(os.path.dirname(sys.executable), "trl-mtp")
    cmd = [cli, "ppo", "--output_dir", str(tmp_path / "out"), "--max_steps", "3", "--response_length", "6",
           "--per_device_train_batch_size", "4", "--pretrain_steps", "20", "--num_eval_examples", "4",
           "--num_train_examples", "16", "--logging_steps", "1", "--head_type", "sequential",
           "--world_model", "true", "--wm_discrete_latent", "true", "--wm_gradient", "coupled",
           "--wm_imagination_horizon", "4", "--wm_critic", "twohot", "--wm_return_norm", "percentile"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "copy eval exact-match" in done.stdout
    assert (tmp_path / "out" / "world_model.safetensors").is_file()
    for metric in ("wm/latent_cos_depth_1", "wm/imagined_return", "wm/return_scale", "loss/wm_discrete_kl"):
        assert metric in done.stdout + done.stderr, metric
