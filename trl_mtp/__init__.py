"""trl-mtp: multi-token prediction heads, MTP post-training on TRL, and self-speculative decoding.

Public names are imported lazily so that `import trl_mtp` (and `trl-mtp --help`) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "MTPConfig": "trl_mtp.config",
    "MTPForCausalLM": "trl_mtp.model",
    "get_task": "trl_mtp.embedded.tasks.registry",
    "get_tokenizer": "trl_mtp.embedded.tokenizer",
    "build_model": "trl_mtp.embedded.presets",
    "evaluate_task": "trl_mtp.embedded.evaluate",
    "pretrain_base": "trl_mtp.embedded.pretrain",
    "bootstrap_ci": "trl_mtp.bootstrap",
    "MTPHeads": "trl_mtp.heads",
    "BlockwiseHeads": "trl_mtp.heads",
    "ParallelHeads": "trl_mtp.heads",
    "SequentialHeads": "trl_mtp.heads",
    "MedusaHeads": "trl_mtp.heads",
    "MTPSFTConfig": "trl_mtp.trainers.sft_config",
    "MTPSFTTrainer": "trl_mtp.trainers.sft_trainer",
    "MTPPPOConfig": "trl_mtp.trainers.ppo_config",
    "MTPPPOTrainer": "trl_mtp.trainers.ppo_trainer",
    "PPOConfig": "trl_mtp.trainers.ppo_config",  # alias of MTPPPOConfig
    "PPOTrainer": "trl_mtp.trainers.ppo_trainer",  # alias of MTPPPOTrainer
    "WorldModelPPOConfig": "trl_mtp.trainers.world_model_ppo_config",
    "WorldModelPPOTrainer": "trl_mtp.trainers.world_model_ppo_trainer",
    "MTPGRPOConfig": "trl_mtp.trainers.grpo_config",
    "MTPGRPOTrainer": "trl_mtp.trainers.grpo_trainer",
    "MTPRLOOConfig": "trl_mtp.trainers.rloo_config",
    "MTPRLOOTrainer": "trl_mtp.trainers.rloo_trainer",
    "MTPDPOConfig": "trl_mtp.trainers.dpo_config",
    "MTPDPOTrainer": "trl_mtp.trainers.dpo_trainer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trl_mtp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
