"""Run by test_ppo_trainer.py under `accelerate launch` (2 CPU processes, gloo): our PPO with MTP heads, DDP."""

import sys
from pathlib import Path

from trl_mtp import MTPPPOConfig, MTPPPOTrainer
from trl_mtp.embedded.presets import build_model
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.embedded.tokenizer import get_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the report helper
from two_process import report_and_exit  # noqa: E402


def digits(prompts, completions, **kwargs):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


tokenizer = get_tokenizer()
args = MTPPPOConfig(
    output_dir=sys.argv[1],
    max_steps=2,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    num_mini_batches=1,
    num_ppo_epochs=1,
    response_length=4,
    learning_rate=1e-3,
    report_to=[],
    save_strategy="no",
    disable_tqdm=True,
    use_cpu=True,
    ddp_find_unused_parameters=False,
    dataloader_pin_memory=False,
    num_mtp_heads=2,
    mtp_every_n_steps=2,
)
trainer = MTPPPOTrainer(
    build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer),
    args,
    train_dataset=get_task("copy", length=2).train(32),
    processing_class=tokenizer,
    reward_funcs=digits,
)
trainer.train()
trainer.save_model()
norm = trainer.mtp_model.base_model.state_dict()["model.norm.weight"].sum().item()
report_and_exit(trainer.accelerator, episode=trainer.state.log_history[-1]["episode"], norm=f"{norm:.6f}")
