"""Run by test_multiprocess.py under torchrun (2 CPU processes, gloo): MTP-SFT with DDP through accelerate."""

import os
import sys

import torch.distributed as dist

from trl_mtp import MTPSFTConfig, MTPSFTTrainer
from trl_mtp.tasks.presets import build_model
from trl_mtp.tasks.registry import get_task
from trl_mtp.tasks.tokenizer import get_tokenizer

out_dir = sys.argv[1]
tokenizer = get_tokenizer()
args = MTPSFTConfig(
    output_dir=out_dir, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
    report_to=[], activation_checkpointing=False, save_strategy="no", dataloader_pin_memory=False, use_cpu=True,
    ddp_find_unused_parameters=False, head_type="sequential", num_mtp_heads=2, mtp_every_n_steps=2,
    mtp_window_schedule="forward", disable_tqdm=True,
)
trainer = MTPSFTTrainer(build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer), args,
                        train_dataset=get_task("arithmetic").train(64), processing_class=tokenizer)
trainer.train()
trainer.save_model()
print(f"RANK {trainer.accelerator.process_index} OF {trainer.accelerator.num_processes} DONE "
      f"mtp/loss_depth_1={trainer.state.log_history[0]['mtp/loss_depth_1']:.4f}", flush=True)
print(f"MODE {trainer.accelerator.distributed_type.value}", flush=True)  # which launcher config took effect
if dist.is_initialized():
    dist.barrier()  # rank 0 may still be saving
    dist.destroy_process_group()
# Every result is printed: leave without interpreter teardown, where torch's gloo threads sometimes abort a rank
# ("terminate called without an active exception", seen under load even after the barrier and destroy above).
sys.stdout.flush()
os._exit(0)
