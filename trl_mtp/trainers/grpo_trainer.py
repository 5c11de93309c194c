"""`MTPGRPOTrainer`: TRL's `GRPOTrainer` with an MTP loss on the completions it samples.

loss = L_GRPO (TRL's, untouched) + lambda(step) * sum_i w_i CE_i on completion tokens (prompt and padding masked),
from the hidden states of GRPO's own grad-enabled forward. Logs `mtp/*` as `MTPSFTTrainer` does. With
`speculative_rollouts`, TRL's transformers generation path samples with the heads drafting
(`trl_mtp.trainers.speculative_rollouts`).
"""

from __future__ import annotations

from trl import GRPOTrainer

from trl_mtp.trainers.grpo_config import MTPGRPOConfig
from trl_mtp.trainers.mtp_mixin import ModelSource, MTPOnPolicyMixin
from trl_mtp.trainers.speculative_rollouts import TRLSpeculativeSampling


class MTPGRPOTrainer(TRLSpeculativeSampling, MTPOnPolicyMixin, GRPOTrainer):
    """`GRPOTrainer` + MTP heads; `model` as in `MTPSFTTrainer`, other arguments are `GRPOTrainer`'s."""

    config_class, default_output_dir = MTPGRPOConfig, "mtp-grpo"

    def __init__(
        self, model: ModelSource, reward_funcs, args: MTPGRPOConfig | None = None, *, peft_config=None, **kwargs
    ):
        args = self._checked_args(args)
        base = self._prepare_mtp_model(model, args, peft_config)
        super().__init__(model=base, reward_funcs=reward_funcs, args=args, peft_config=peft_config, **kwargs)
        self._after_parent_init()
        self._refuse_unsupported_speculation()

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self.args.speculative_rollouts:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        return self.speculative_completions(prompt_ids), None  # no sampler log-probs, as TRL's path
