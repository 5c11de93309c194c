"""MTP-SFT under FSDP2 or DeepSpeed ZeRO as users launch it (accelerate config + the Trainer), run by
test_sharded_engines.py in 2 CPU processes (gloo), or in 1 process as the reference with the same global batch.

argv: output_dir, engine (fsdp2 | zero2 | zero3 | none), per-device batch size, optionally mode (coupled |
decoupled) and max_grad_norm, and `local-norms` (a broken clipping, for the test). Reports, per rank: the losses, the
local (this rank's) and full shapes of two head parameters, and whether lm_head is still the input embedding.
"""

import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the launch helpers
from two_process import enable_cpu_fsdp, local_shape, report_and_exit  # noqa: E402

from trl_mtp import MTPSFTConfig, MTPSFTTrainer  # noqa: E402
from trl_mtp.embedded.presets import build_model  # noqa: E402
from trl_mtp.embedded.tasks.registry import get_task  # noqa: E402
from trl_mtp.embedded.tokenizer import get_tokenizer  # noqa: E402

out_dir, engine, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
mode, max_grad_norm = (sys.argv[4], float(sys.argv[5])) if len(sys.argv) > 4 else ("coupled", 1.0)
if engine == "fsdp2":
    enable_cpu_fsdp()
if "local-norms" in sys.argv[6:]:  # the broken clipping a test must catch: each rank clips on its shard's norm

    def clip_on_local_norm(params, max_norm):
        grads = [p.grad.to_local() for p in params if p.grad is not None]
        norm = torch.stack([g.norm() for g in grads]).norm()
        for grad in grads:
            grad.mul_(min(1.0, max_norm / (norm.item() + 1e-6)))
        return norm

    torch.nn.utils.clip_grad_norm_ = clip_on_local_norm
tokenizer = get_tokenizer()
args = MTPSFTConfig(
    output_dir=out_dir,
    max_steps=3,
    per_device_train_batch_size=batch,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    activation_checkpointing=False,
    save_strategy="no",
    dataloader_pin_memory=False,
    use_cpu=not engine.startswith("zero"),  # accelerate only takes the DeepSpeed path without use_cpu
    ddp_backend="gloo"
    if engine.startswith("zero")
    else None,  # without GPUs accelerate finds no backend for DeepSpeed and would count 1 process
    ddp_find_unused_parameters=False,
    mode=mode,
    max_grad_norm=max_grad_norm,
    head_type="sequential",
    num_mtp_heads=2,
    disable_tqdm=True,
)
model = build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer, num_hidden_layers=2)
trainer = MTPSFTTrainer(model, args, train_dataset=get_task("arithmetic").train(32), processing_class=tokenizer)
trainer.train()
params = dict(trainer.model_wrapped.named_parameters())
base = trainer.accelerator.unwrap_model(trainer.model_wrapped)
shapes = {
    name: local_shape(params[key])
    for name, key in [
        ("eh_proj", next(k for k in params if k.endswith("mtp_heads.layers.0.eh_proj.weight"))),
        ("q_proj", next(k for k in params if k.endswith("mtp_heads.layers.0.mtp_block.self_attn.q_proj.weight"))),
    ]
}
tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
trainer.save_model()
losses = ",".join(f"{h['loss']:.5f}" for h in trainer.state.log_history if "loss" in h)
norms = ",".join(f"{h['grad_norm']:.5f}" for h in trainer.state.log_history if "grad_norm" in h)
# for docs/scaling.md: the mean step time (this run's 3 steps) and this process's peak resident memory
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
