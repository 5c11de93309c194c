"""Run by tests/test_accelerate_configs.py under `accelerate launch` with the DDP example config (2 CPU processes,
gloo): MTP-SFT with DDP through accelerate."""

import sys
from pathlib import Path

from trl_mtp import MTPSFTConfig, MTPSFTTrainer
from trl_mtp.embedded.presets import build_model
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.embedded.tokenizer import get_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the report helper
from two_process import report_and_exit  # noqa: E402

out_dir = sys.argv[1]
tokenizer = get_tokenizer()
args = MTPSFTConfig(
    output_dir=out_dir,
    max_steps=4,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    activation_checkpointing=False,
    save_strategy="no",
    dataloader_pin_memory=False,
    use_cpu=True,
    ddp_find_unused_parameters=False,
    head_type="sequential",
    num_mtp_heads=2,
    mtp_every_n_steps=2,
    mtp_window_schedule="forward",
    disable_tqdm=True,
)
trainer = MTPSFTTrainer(
    build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer),
    args,
    train_dataset=get_task("arithmetic").train(64),
    processing_class=tokenizer,
)
trainer.train()
trainer.save_model()
report_and_exit(
    trainer.accelerator,
    loss_depth_1=f"{trainer.state.log_history[0]['mtp/loss_depth_1']:.4f}",
    mode=trainer.accelerator.distributed_type.value,
)  # which launcher config took effect
