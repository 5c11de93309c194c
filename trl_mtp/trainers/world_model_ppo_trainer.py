"""`WorldModelPPOTrainer`: `MTPPPOTrainer` with a latent world model (`trl_mtp/world_model.py`) trained on the
rollouts, a critic it trains, and DreamerV3's return normalisation.

    trainer = WorldModelPPOTrainer(model, WorldModelPPOConfig(output_dir="wm-ppo", head_type="sequential"),
                                   train_dataset=prompts, processing_class=tokenizer, reward_funcs=[reward])

It plugs into PPO's extension points: the module tree (`_build_policy_and_value`: the critic, the `WorldModel` and
the return normaliser are children of it: one optimizer, one device move, one checkpoint), the critic's loss, the
world model's loss terms, the advantages' normalisation, the slow critic's EMA after each optimizer step, gradient
clipping (the world model and its critic are clipped with the heads, apart from the policy) and the checkpoint
(`world_model.safetensors`). DreamerV3's equations are in `trl_mtp/dreamer.py`.
"""

from __future__ import annotations

import os

import torch

from trl_mtp.trainers import ppo_core as core
from trl_mtp.trainers.ppo_models import PolicyAndValue
from trl_mtp.trainers.ppo_trainer import MTPPPOTrainer, Rollouts, load_states, save_states, sub_state
from trl_mtp.trainers.world_model_ppo_config import WorldModelPPOConfig
from trl_mtp.world_model import PercentileNormalizer, TwoHotHead, TwoHotValueHead, WorldModel

WORLD_MODEL_FILE = "world_model.safetensors"
WORLD_MODEL_MODULES = ("world_model", "return_normalizer")  # PolicyAndValue children saved in WORLD_MODEL_FILE


class WorldModelPPOTrainer(MTPPPOTrainer):
    """PPO with a Dreamer-style world model on the policy's hidden states; the arguments of `MTPPPOTrainer`, with a
    `WorldModelPPOConfig` and the value head on the policy (`value_model=None`: the critic reads the world model's
    features)."""

    config_class = WorldModelPPOConfig

    def _build_policy_and_value(self, base, value_model, args: WorldModelPPOConfig) -> PolicyAndValue:
        if value_model is not None:
            raise ValueError(
                "WorldModelPPOTrainer needs the value head on the policy (value_model=None): the critic "
                "reads the world model's latents"
            )
        trunk = self.mtp_model.trunk
        hidden_size = trunk.model.config.get_text_config().hidden_size
        value_head = TwoHotValueHead(hidden_size, args.wm_num_bins) if args.wm_critic == "twohot" else None
        policy_and_value = PolicyAndValue(base, trunk, None, value_head)
        policy_and_value.world_model = WorldModel(trunk, self.mtp_model.heads, args, policy_and_value.value_head)
        policy_and_value.return_normalizer = (
            PercentileNormalizer(args.wm_return_norm_decay) if args.wm_return_norm == "percentile" else None
        )
        return policy_and_value

    def _auxiliary_modules(self) -> list:
        """The world model and the critic it trains go with the heads: their gradients never rescale the policy's."""
        return [*super()._auxiliary_modules(), self.model.world_model, self.model.value_head]

    # == advantages, losses, the optimizer step ======================================================================
    def compute_advantages(self, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """With `wm_return_norm="percentile"`: GAE advantages divided by max(1, EMA(P95) - EMA(P5)) of the returns
        (DreamerV3 return normalisation: no mean shift, small returns never scaled up); else PPO's whitening."""
        normalizer = self.model.return_normalizer
        if normalizer is None or not rollouts.mask.any():
            return super().compute_advantages(rollouts)
        advantages, returns = self.gae(rollouts)
        scale = normalizer.update(returns[rollouts.mask])
        self._metrics["train"]["wm/return_scale"].append(scale.item())
        return (advantages / scale).masked_fill(~rollouts.mask, 0.0), returns

    def value_loss(
        self, model: PolicyAndValue, hidden: torch.Tensor, values: torch.Tensor, batch: Rollouts
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The world model trains the critic: it reads h as the world model routes it (sg(h) decoupled). Two-hot
        critic: cross-entropy to twohot(R), no clipping (DreamerV3, eq. 10-11); scalar: PPO's clipped loss."""
        features = model.world_model.critic_features(hidden)
        if isinstance(model.value_head, TwoHotHead):
            loss = core.masked_mean(model.value_head.loss(features, batch.returns), batch.mask)
            return loss, {"clipfrac": torch.zeros((), device=loss.device)}
        return super().value_loss(model, hidden, model.value_head(features), batch)

    def auxiliary_losses(
        self, model: PolicyAndValue, hidden: torch.Tensor, logits: torch.Tensor, batch: Rollouts
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The world model's terms (`wm_*`) and statistics (`wm/*`)."""
        return model.world_model.losses(
            hidden,
            batch.query_responses,
            batch.attention_mask,
            batch.context_length,
            logits,
            batch.rewards,
            batch.mask,
            model.value_head,
        )

    def after_optimizer_step(self) -> None:
        self.model.world_model.update_slow_critic(self.model.value_head)

    # == save and resume =============================================================================================
    def _world_modules(self) -> dict[str, torch.nn.Module]:
        return {
            name: getattr(self.model, name) for name in WORLD_MODEL_MODULES if getattr(self.model, name) is not None
        }

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """`MTPPPOTrainer`'s checkpoint plus `world_model.safetensors` (world model and return normaliser)."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            modules = self._world_modules()
            # the gathered full tensors the Trainer passes under FSDP / ZeRO-3 (the modules hold only their shards)
            states = None if state_dict is None else {name: sub_state(state_dict, f"{name}.") for name in modules}
            save_states(os.path.join(output_dir, WORLD_MODEL_FILE), modules, states)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, WORLD_MODEL_FILE)
        if os.path.isfile(path):  # a plain PPO checkpoint has none: the world model starts fresh
            load_states(path, self._world_modules(), device=str(self.mtp_model.device))
