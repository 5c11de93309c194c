"""Trainers: a config file and a trainer file per method, as TRL does."""

from trl_mtp.trainers.dpo_config import MTPDPOConfig
from trl_mtp.trainers.dpo_trainer import MTPDPOTrainer
from trl_mtp.trainers.grpo_config import MTPGRPOConfig
from trl_mtp.trainers.grpo_trainer import MTPGRPOTrainer
from trl_mtp.trainers.ppo_config import MTPPPOConfig, PPOConfig
from trl_mtp.trainers.ppo_trainer import MTPPPOTrainer, PPOTrainer
from trl_mtp.trainers.rloo_config import MTPRLOOConfig
from trl_mtp.trainers.rloo_trainer import MTPRLOOTrainer
from trl_mtp.trainers.sft_config import MTPSFTConfig
from trl_mtp.trainers.sft_trainer import MTPSFTTrainer
from trl_mtp.trainers.world_model_ppo_config import WorldModelPPOConfig
from trl_mtp.trainers.world_model_ppo_trainer import WorldModelPPOTrainer

__all__ = [
    "MTPDPOConfig",
    "MTPDPOTrainer",
    "MTPGRPOConfig",
    "MTPGRPOTrainer",
    "MTPPPOConfig",
    "MTPPPOTrainer",
    "MTPRLOOConfig",
    "MTPRLOOTrainer",
    "MTPSFTConfig",
    "MTPSFTTrainer",
    "PPOConfig",
    "PPOTrainer",
    "WorldModelPPOConfig",
    "WorldModelPPOTrainer",
]
