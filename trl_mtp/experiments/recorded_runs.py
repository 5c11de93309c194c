"""Recorded runs on the embedded default (the demo's diagnostics stage and the figures of docs/interpretability.md).

`recorded_sft_run`: MTP-SFT from a base on the prompt-task mixture with `MTPRecorder` on, the model saved, then
`consistency_probe` on a task; `recorded_grpo_run`: MTP-GRPO from such a run with the recorder observing rollouts.
A finished run (its `diagnostics/summary.json` exists) is not run again.
"""

from __future__ import annotations

import json
from pathlib import Path

from trl_mtp.diagnostics.recorder import DEFAULT_EVERY, MTPRecorder, make_probe_batch


def probe_task(
    model_dir,
    task_name: str = "arithmetic",
    n: int = 16,
    positions: int = 8,
    samples: int = 64,
    seed: int = 0,
    task_params: dict | None = None,
) -> dict:
    """`trl-mtp probe` as a function: writes `model_dir/diagnostics/consistency.json` and returns it. `task_params`:
    the task's parameters (`length`, ...) when not its defaults."""
    from transformers import AutoTokenizer

    from trl_mtp.diagnostics.consistency import consistency_probe, task_contexts
    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.model import MTPForCausalLM

    model = MTPForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = task_contexts(get_task(task_name, seed=seed, **(task_params or {})), tokenizer, n, positions)
    result = consistency_probe(
        model,
        data["contexts"],
        targets=data["targets"],
        positions=data["positions"],
        sequences=data["sequences"],
        n_samples=samples,
        seed=seed,
    )
    result["settings"].update(task=task_name, task_params=task_params or {}, model=str(model_dir))
    out = Path(model_dir) / "diagnostics" / "consistency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def recorded_sft_run(
    base_dir,
    out_dir,
    *,
    head_type: str = "parallel",
    num_mtp_heads: int = 2,
    steps: int = 300,
    seed: int = 0,
    every: int = DEFAULT_EVERY,
    probe: str | None = "arithmetic",
) -> Path:
    """MTP-SFT of the base in `base_dir` with the recorder on (`run_sft(record_every=...)` on the prompt-task
    mixture); saved into `out_dir`; consistency-probed on `probe`."""
    from trl_mtp.embedded.tasks import PROMPT_TASKS
    from trl_mtp.experiments.sft_runs import run_sft

    out_dir = Path(out_dir)
    tasks = {name: {"seed": seed} for name in sorted(PROMPT_TASKS, key=lambda name: name != "arithmetic")}
    run_sft(
        base_dir,
        out_dir,
        tasks=tasks,
        mtp={"head_type": head_type, "num_mtp_heads": num_mtp_heads},
        seed=seed,
        steps=steps,
        n_train=1000,
        record_every=every,
        logging_steps=10,
    )
    if probe and not (out_dir / "diagnostics" / "consistency.json").is_file():
        probe_task(out_dir, probe, seed=seed)
    return out_dir


def recorded_grpo_run(
    model_dir, out_dir, *, task_name: str = "arithmetic", steps: int = 40, seed: int = 0, every: int = 5
) -> Path:
    """MTP-GRPO from an MTP checkpoint on one task, recorder observing the sampled rollouts; probed after."""
    out_dir = Path(out_dir)
    if (out_dir / "diagnostics" / "summary.json").is_file():
        return out_dir
    from transformers import AutoTokenizer

    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.trainers import MTPGRPOConfig, MTPGRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task(task_name, seed=seed)
    args = MTPGRPOConfig(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-4,
        logging_steps=1,
        report_to=[],
        activation_checkpointing=False,
        save_strategy="no",
        dataloader_pin_memory=False,
        seed=seed,
        disable_tqdm=True,
        bf16=False,
        num_generations=8,
        max_completion_length=12,
        generation_batch_size=16,
        temperature=1.0,
    )
    trainer = MTPGRPOTrainer(
        str(model_dir), reward_funcs=task.reward, args=args, train_dataset=task.train(500), processing_class=tokenizer
    )
    probe_batch = make_probe_batch(tokenizer, task.eval(8))
    trainer.add_callback(MTPRecorder(trainer.mtp_model, probe_batch, every=every, tokenizer=tokenizer))
    trainer.train()
    trainer.save_model(str(out_dir))
    probe_task(out_dir, task_name, seed=seed)
    return out_dir
