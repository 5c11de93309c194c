"""One SFT run from a base model: next-token (TRL's SFTTrainer) or MTP (MTPSFTTrainer), then held-out scores.

Shared by the demo's SFT stage and the SFT experiments, so that both compare NTP and MTP the same way: the same
base, data, optimizer, steps and seed; only the MTP fields differ. A finished run writes `result.json` in its
folder and is not run again (resume).
"""

from __future__ import annotations

import time

from trl_mtp.experiments import resumable

SFT_DEFAULTS = dict(
    learning_rate=2e-3,
    per_device_train_batch_size=16,
    lr_scheduler_type="cosine",
    warmup_steps=10,
    logging_steps=25,
    report_to="none",
    activation_checkpointing=False,
    dataloader_pin_memory=False,
    save_strategy="no",
    disable_tqdm=True,
    bf16=False,
)


def task_mixture(tasks: dict[str, dict], n_train: int, seed: int):
    """`n_train` training examples of each task (name -> parameters), shuffled together."""
    from datasets import concatenate_datasets

    from trl_mtp.embedded.tasks.registry import get_task

    parts = [get_task(name, **params).train(n_train) for name, params in tasks.items()]
    return concatenate_datasets(parts).shuffle(seed=seed)


@resumable
def run_sft(
    base_dir,
    out_dir,
    *,
    tasks: dict[str, dict],
    mtp: dict | None,
    seed: int = 0,
    steps: int = 300,
    n_train: int = 2000,
    eval_n: int = 200,
    record_every: int | None = None,
    save: bool = False,
    **overrides,
) -> dict:
    """Fine-tune the base in `base_dir` on `tasks` for `steps` optimizer steps; score greedy exact match on each
    task's eval split. `mtp=None` trains with TRL's plain `SFTTrainer` (next-token); a dict of MTP fields
    (`head_type`, `num_mtp_heads`, ...) trains with `MTPSFTTrainer`. Returns (and stores) per-task per-item
    correctness, so callers can bootstrap confidence intervals; a finished run is read back (`resumable`).

    `record_every` (MTP only): `MTPRecorder` records the heads every that many steps into `out_dir/diagnostics`
    (probe batch: the first task's eval split) and the model is saved in `out_dir`, for `trl-mtp report`.
    `save`: save the trained model (with its heads, for MTP) in `out_dir`, e.g. as the start of an RL run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trl_mtp.embedded.evaluate import evaluate_task, heldout_nll
    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.trainers import MTPSFTConfig, MTPSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    args = dict(SFT_DEFAULTS, output_dir=str(out_dir), max_steps=steps, seed=seed, **overrides)
    dataset = task_mixture(tasks, n_train, seed)
    start = time.time()
    if mtp is None:
        trainer = SFTTrainer(model, SFTConfig(**args), train_dataset=dataset, processing_class=tokenizer)
    else:
        trainer = MTPSFTTrainer(model, MTPSFTConfig(**args, **mtp), train_dataset=dataset, processing_class=tokenizer)
        if record_every:
            from trl_mtp.diagnostics.recorder import MTPRecorder, make_probe_batch

            first = next(iter(tasks.items()))
            probe_batch = make_probe_batch(tokenizer, get_task(first[0], **first[1]).eval(8))
            trainer.add_callback(MTPRecorder(trainer.mtp_model, probe_batch, every=record_every, tokenizer=tokenizer))
    train_output = trainer.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.state.save_to_json(str(out_dir / "trainer_state.json"))  # the log history, for `trl-mtp report`
    if save or (mtp is not None and record_every):
        trainer.save_model(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    train_seconds = time.time() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    scores = {}
    for name, params in tasks.items():
        task = get_task(name, **params)
        if name == "stdlib":  # language modelling: held-out next-token loss (nats/token) on held-out files
            scores[name] = {"nll": heldout_nll(model, tokenizer, task.eval(eval_n)["text"], max_length=256)}
            continue
        scored = evaluate_task(model, tokenizer, task, n=eval_n)
        scores[name] = {"accuracy": scored["accuracy"], "correct": scored["correct"]}
    result = {
        "mtp": mtp,
        "seed": seed,
        "steps": steps,
        "train_seconds": train_seconds,
        "final_train_loss": logs[-1]["loss"] if logs else train_output.training_loss,
        "tasks": scores,
        "final_token_accuracy": logs[-1].get("mean_token_accuracy") if logs else None,
        "mtp_metrics": {k: v for k, v in (logs[-1] if logs else {}).items() if k.startswith("mtp/")},
    }
    return result


# where `**overrides` go: checked by experiment specs (`MTPSFTConfig` has every field of TRL's `SFTConfig`)
run_sft.forwards_to = ("trl_mtp.trainers.sft_config:MTPSFTConfig",)


def cached_sft_model(
    name: str,
    *,
    preset: str = "tiny-llama",
    pretrain_steps: int = 600,
    tasks: dict[str, dict],
    mtp: dict | None,
    steps: int,
    seed: int = 0,
):
    """A model SFT'd (with `mtp` heads, or next-token when None) from the cached pretrained base and saved with its
    heads: the common start of experiments that decode or do RL from it. Trained once, then read from the trl-mtp
    cache (`name/<hash of the arguments>`)."""
    from trl_mtp.embedded.cache import cache_root, stable_hash
    from trl_mtp.embedded.pretrain import pretrain_base

    base = pretrain_base(preset, "mix", steps=pretrain_steps, seed=0)
    out = (
        cache_root() / name / stable_hash({"base": str(base), "tasks": tasks, "mtp": mtp, "steps": steps, "seed": seed})
    )
    run_sft(base, out, tasks=tasks, mtp=mtp, seed=seed, steps=steps, eval_n=200, save=True)
    return out
