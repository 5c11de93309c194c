"""MTP-SFT under FSDP2 or DeepSpeed ZeRO as users launch it (accelerate config + the Trainer), run by
test_sharded_engines.py in 2 CPU processes (gloo), or in 1 process as the reference with the same global batch.

argv: the initial model's folder, output_dir, engine (fsdp2 | zero2 | zero3 | none), per-device batch size, optionally
mode (coupled | decoupled) and max_grad_norm, then flags: `local-norms` / `no-gather` (a broken clipping / head
construction, for the tests), `lambda0` (the MTP loss off: mtp_lambda 0), `checkpointed` / `resume` (4 steps with a
checkpoint every 2; resumed from the last checkpoint in output_dir). The model is loaded from its folder as users load
a checkpoint: under ZeRO-3 transformers partitions it on load, before the heads are built from its last layer. Reports,
per rank: the losses, the local (this rank's) part and the full size of two head parameters, and whether lm_head is
still the input embedding.
"""

import resource
import sys
from pathlib import Path

import torch
from transformers import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the launch helpers
from two_process import enable_cpu_fsdp, full_shape, local_shape, report_and_exit, without_deepspeed_shm_op  # noqa: E402

from trl_mtp import MTPSFTConfig, MTPSFTTrainer  # noqa: E402
from trl_mtp.embedded.tasks.registry import get_task  # noqa: E402
from trl_mtp.embedded.tokenizer import get_tokenizer  # noqa: E402

model_dir, out_dir, engine, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mode, max_grad_norm = (sys.argv[5], float(sys.argv[6])) if len(sys.argv) > 5 else ("coupled", 1.0)
if engine == "fsdp2":
    enable_cpu_fsdp()
if engine.startswith("zero"):
    without_deepspeed_shm_op()
if "local-norms" in sys.argv[7:]:  # the broken clipping a test must catch: each rank clips on its shard's norm

    def clip_on_local_norm(params, max_norm):
        grads = [p.grad.to_local() for p in params if p.grad is not None]
        norm = torch.stack([g.norm() for g in grads]).norm()
        for grad in grads:
            grad.mul_(min(1.0, max_norm / (norm.item() + 1e-6)))
        return norm

    torch.nn.utils.clip_grad_norm_ = clip_on_local_norm
if "no-gather" in sys.argv[7:]:  # the broken construction a test must catch: heads copied from empty partitions
    import contextlib

    import trl_mtp.heads.trunk

    trl_mtp.heads.trunk.gathered = lambda params: contextlib.nullcontext()
# resume: `checkpointed` runs 4 steps saving every 2; `resume` goes on from the last checkpoint in output_dir;
# `resume-fresh-optimizer` resumes without the optimizer state (broken, for the test)
flags = set(sys.argv[7:])
checkpointed = bool({"checkpointed", "resume", "resume-fresh-optimizer"} & flags)
if "resume-fresh-optimizer" in flags:
    import transformers.trainer

    Trainer._load_optimizer_and_scheduler = lambda self, checkpoint: None  # the Trainer's path (FSDP)

    def load_without_optimizer(engine, checkpoint, load_module_strict=True):  # DeepSpeed's: its engine checkpoint
        engine.load_checkpoint(checkpoint, load_module_strict=load_module_strict, load_optimizer_states=False)

    transformers.trainer.deepspeed_load_checkpoint = load_without_optimizer
tokenizer = get_tokenizer()
args = MTPSFTConfig(
    output_dir=out_dir,
    max_steps=4 if checkpointed else 3,
    save_strategy="steps" if checkpointed else "no",
    save_steps=2,
    per_device_train_batch_size=batch,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    activation_checkpointing=False,
    dataloader_pin_memory=False,
    use_cpu=not engine.startswith("zero"),  # accelerate only takes the DeepSpeed path without use_cpu
    ddp_backend="gloo"
    if engine.startswith("zero")
    else None,  # without GPUs accelerate finds no backend for DeepSpeed and would count 1 process
    ddp_find_unused_parameters=False,
    mode=mode,
    **({"mtp_lambda": 0.0} if "lambda0" in flags else {}),
    max_grad_norm=max_grad_norm,
    head_type="sequential",
    num_mtp_heads=2,
    disable_tqdm=True,
)
peft_config = None
if "lora" in flags:  # LoRA on the trunk's attention, heads trained in full
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
trainer = MTPSFTTrainer(
    model_dir,
    args,
    train_dataset=get_task("arithmetic").train(32),
    processing_class=tokenizer,
    peft_config=peft_config,
)
trainer.train(resume_from_checkpoint=bool(flags & {"resume", "resume-fresh-optimizer"}) or None)
params = dict(trainer.model_wrapped.named_parameters())
base = trainer.accelerator.unwrap_model(trainer.model_wrapped)
shapes = {}
for name, suffix in [("eh_proj", "eh_proj.weight"), ("q_proj", "mtp_block.self_attn.q_proj.weight")]:
    param = params[next(k for k in params if k.endswith(f"mtp_heads.layers.0.{suffix}"))]
    shapes[name], shapes[f"{name}_full"] = local_shape(param), full_shape(param)
if "lora" in flags:  # an adapter's A matrix [r=4, 128]: sharded with the rest
    lora = params[next(k for k in params if k.endswith("layers.0.self_attn.q_proj.lora_A.default.weight"))]
    shapes["lora_A"], shapes["lora_A_full"] = local_shape(lora), full_shape(lora)
tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
trainer.save_model()
losses = ",".join(f"{h['loss']:.5f}" for h in trainer.state.log_history if "loss" in h)
norms = ",".join(f"{h['grad_norm']:.5f}" for h in trainer.state.log_history if "grad_norm" in h)
# for docs/scaling.md: the mean step time (over this run's steps) and this process's peak resident memory
step_s = trainer.state.log_history[-1]["train_runtime"] / trainer.state.global_step
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
report_and_exit(
    trainer.accelerator,
    mode=trainer.accelerator.distributed_type.value,
    losses=losses,
    norms=norms,
    tied=tied,
    step_s=f"{step_s:.3f}",
    peak_mb=f"{peak_mb:.0f}",
    **shapes,
)
