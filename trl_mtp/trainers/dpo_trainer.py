"""`MTPDPOTrainer`: TRL's `DPOTrainer` with an MTP loss on the chosen responses.

loss = L_DPO (TRL's, untouched) + lambda(step) * sum_i w_i CE_i on the chosen completions only: a loss on the
rejected ones would teach the heads to predict text the policy is being taught not to write. The heads read the
hidden states of DPO's own policy forward (the batch is [chosen; rejected]); the reference forward that may follow
through the same model (PEFT with adapters disabled) does not replace them.
"""

from __future__ import annotations

from trl import DPOTrainer

from trl_mtp.trainers.dpo_config import MTPDPOConfig
from trl_mtp.trainers.mtp_mixin import ModelSource, MTPTrainerMixin


class MTPDPOTrainer(MTPTrainerMixin, DPOTrainer):
    """`DPOTrainer` + MTP heads; `model` as in `MTPSFTTrainer`, other arguments are `DPOTrainer`'s."""

    config_class, default_output_dir = MTPDPOConfig, "mtp-dpo"

    def __init__(
        self, model: ModelSource, ref_model=None, args: MTPDPOConfig | None = None, *, peft_config=None, **kwargs
    ):
        args = self._checked_args(args)
        base = self._prepare_mtp_model(model, args, peft_config)
        super().__init__(model=base, ref_model=ref_model, args=args, peft_config=peft_config, **kwargs)
        self._after_parent_init()

    def _compute_loss(self, model, inputs, return_outputs):
        with self.mtp_model.trunk.keep_first_capture():  # the policy forward runs first, the reference after it
            result = super()._compute_loss(model, inputs, return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        input_ids = inputs["input_ids"]
        labels = input_ids.masked_fill(inputs["completion_mask"] == 0, -100)
        labels[input_ids.size(0) // 2 :] = -100  # [chosen; rejected]: the heads learn the chosen responses only
        mtp_inputs = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": inputs.get("attention_mask"),
            "position_ids": inputs.get("position_ids"),
        }
        loss = self.add_mtp_loss(loss, mtp_inputs)
        return (loss, outputs) if return_outputs else loss
