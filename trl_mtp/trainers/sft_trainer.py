"""`MTPSFTTrainer`: TRL's `SFTTrainer` with an MTP loss on the hidden states its own forward produced.

    trainer = MTPSFTTrainer(model="path/or/hub-id", args=MTPSFTConfig(head_type="parallel", num_mtp_heads=2),
                            train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

loss = L_SFT (TRL's, untouched: any dataset format, completion-only / assistant-only masks, packing)
     + lambda(step) * sum_i w_i CE_i (heads 1..window(step), only on steps with step % mtp_every_n_steps == 0)

Logged through `Trainer.log` (so every `report_to` backend gets them): `mtp/loss_depth_{i}`, `mtp/acc_depth_{i}`,
`mtp/entropy_depth_{i}`, `mtp/loss`, `mtp/lambda`, `mtp/window`, `mtp/applied`.
"""

from __future__ import annotations

from trl import SFTTrainer

from trl_mtp.trainers.mtp_mixin import ModelSource, MTPTrainerMixin
from trl_mtp.trainers.sft_config import MTPSFTConfig


class MTPSFTTrainer(MTPTrainerMixin, SFTTrainer):
    """`SFTTrainer` + MTP heads. `model`: a path or hub id, a `PreTrainedModel` (heads built from `args`), or an
    `MTPForCausalLM` (its heads kept, trained with the loss fields of `args`). `peft_config`: LoRA on the trunk, heads
    trained in full. Other arguments are `SFTTrainer`'s."""

    config_class, default_output_dir = MTPSFTConfig, "mtp-sft"

    def __init__(self, model: ModelSource, args: MTPSFTConfig | None = None, *, peft_config=None, **kwargs):
        args = self._checked_args(args)
        base = self._prepare_mtp_model(model, args, peft_config)
        args.model_init_kwargs = None  # they served loading `model` (if a path); SFTTrainer gets an instance
        super().__init__(model=base, args=args, peft_config=peft_config, **kwargs)
        self._after_parent_init()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss, outputs = result if return_outputs else (result, None)
        loss = self.add_mtp_loss(loss, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss
