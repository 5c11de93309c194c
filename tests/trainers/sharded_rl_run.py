"""Our PPO or MTP-GRPO under FSDP2 or DeepSpeed ZeRO-2 / ZeRO-3 as users launch them (accelerate config + the trainer), run
by test_sharded_rl.py in 2 CPU processes (gloo).

argv: the initial model's folder, output_dir, trainer (ppo | wm-ppo | grpo), engine (ddp | fsdp2 | zero2 | zero3), mode
(coupled | decoupled), and optionally `no-unshard` (PPO's sampling without the FSDP2 root's parameters gathered, for the test),
`no-gather` (PPO's reference copied from ZeRO-3's empty partitions, for the test), `beta` (GRPO with a KL reference
model, beta 0.04), `no-ref-engine` (that reference left out of DeepSpeed's engine, for the test), `lambda0` (the MTP
loss off) and `no-clip` (max_grad_norm 0, for a DeepSpeed config without clipping).
2 iterations of a tiny Llama with 2 sequential heads, then `save_model`. Reports, per rank: whether lm_head is still
the input embedding, fingerprints (`two_process.fingerprint`) of every trained parameter before and after training
and of the causal LM with its heads after it (what the saved folder must hold) and without them, the first logged MTP loss, and
the first head's eh_proj as this rank holds it and in full (ZeRO-3 partitions it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the launch helpers
from two_process import enable_cpu_fsdp, fingerprint, full_shape, local_shape, report_and_exit, without_deepspeed_shm_op  # noqa: E402

import trl_mtp  # noqa: E402
from trl_mtp.embedded.tasks.registry import get_task  # noqa: E402
from trl_mtp.embedded.tokenizer import get_tokenizer  # noqa: E402

model_dir, out_dir, algorithm, engine, mode = sys.argv[1:6]
if engine == "fsdp2":
    enable_cpu_fsdp()
if engine.startswith("zero"):
    without_deepspeed_shm_op()
if "no-unshard" in sys.argv[6:]:  # the broken rollout a test must catch: sampling without the root's parameters
    import trl_mtp.trainers.ppo_trainer

    trl_mtp.trainers.ppo_trainer.register_fsdp_forward_method = lambda module, name: None
if "no-gather" in sys.argv[6:]:  # the broken reference a test must catch: copied from ZeRO-3's empty partitions
    import copy

    from transformers import PreTrainedModel

    from trl_mtp.heads.trunk import Trunk

    copy_module = Trunk.copy_module

    def copy_without_gathering(self, module):  # the heads' layers are still copied from the gathered trunk
        if not isinstance(module, PreTrainedModel):
            return copy_module(self, module)
        with self.hooks_removed():
            return copy.deepcopy(module)

    Trunk.copy_module = copy_without_gathering

if "no-ref-engine" in sys.argv[6:]:  # the broken reference a test must catch: ZeRO-3's partitions never gathered
    import trl.trainer.grpo_trainer

    trl.trainer.grpo_trainer.prepare_deepspeed = lambda model, accelerator: model


def parity(prompts, completions, completion_ids, **kwargs):
    """A reward that varies between samples (an untrained policy writes no digits: a task reward would be 0
    everywhere), so the policy gets a gradient from the RL loss."""
    return [float(sum(ids) % 2) for ids in completion_ids]


common = dict(
    output_dir=out_dir,
    max_steps=2,
    per_device_train_batch_size=2,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    disable_tqdm=True,
    dataloader_pin_memory=False,
    use_cpu=not engine.startswith("zero"),  # accelerate only takes the DeepSpeed path without use_cpu
    ddp_backend="gloo" if engine.startswith("zero") else None,
    ddp_find_unused_parameters=False,
    activation_checkpointing=False,
    mode=mode,
    head_type="sequential",
    num_mtp_heads=2,
    seed=0,
    **({"mtp_lambda": 0.0} if "lambda0" in sys.argv[6:] else {}),
    **({"max_grad_norm": 0.0} if "no-clip" in sys.argv[6:] else {}),
)
tokenizer = get_tokenizer()
task = get_task("copy", length=2)
ppo_settings = dict(response_length=4, num_mini_batches=1, num_ppo_epochs=1)
beta = {"beta": 0.04} if {"beta", "no-ref-engine"} & set(sys.argv[6:]) else {}
config_class, trainer_class, settings = {  # wm-ppo: PPO with the world model
    "ppo": (trl_mtp.MTPPPOConfig, trl_mtp.MTPPPOTrainer, ppo_settings),
    "wm-ppo": (trl_mtp.WorldModelPPOConfig, trl_mtp.WorldModelPPOTrainer, {**ppo_settings, "world_model": True}),
    "grpo": (trl_mtp.MTPGRPOConfig, trl_mtp.MTPGRPOTrainer, dict(num_generations=2, max_completion_length=4, **beta)),
}[algorithm]
trainer = trainer_class(
    model_dir,
    args=config_class(**common, **settings),
    reward_funcs=parity,
    train_dataset=task.train(16),
    processing_class=tokenizer,
)
before = fingerprint(trainer.model)
trainer.train()
first = next(h for h in trainer.state.log_history if "mtp/loss" in h)
eh_proj = next(p for name, p in trainer.model_wrapped.named_parameters() if name.endswith("0.eh_proj.weight"))
trained = trainer.accelerator.unwrap_model(trainer.model_wrapped)
policy = fingerprint(trained.policy if algorithm != "grpo" else trained)  # the causal LM with its heads attached
trainer.save_model()
base = trainer.mtp_model.base_model
report_and_exit(
    trainer.accelerator,
    mode=trainer.accelerator.distributed_type.value,
    tied=base.get_output_embeddings().weight is base.get_input_embeddings().weight,
    before=before,
    after=fingerprint(trained),
    policy=policy,
    # the policy without the heads (trunk, embeddings, LM head): what decoupled mode keeps from the MTP loss
    trunk=fingerprint(trained.policy if algorithm != "grpo" else trained, exclude="mtp_heads."),
    mtp_loss=f"{first['mtp/loss']:.6f}",
    steps=trainer.state.global_step,
    kl=",".join(f"{h['kl']:.3e}" for h in trainer.state.log_history if "kl" in h) or "none",
    eh_proj=local_shape(eh_proj),
    eh_proj_full=full_shape(eh_proj),
)
