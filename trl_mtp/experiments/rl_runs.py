"""One RL run from an MTP checkpoint: our PPO or TRL's GRPO (both with MTP heads), then held-out scores and the heads'
speculative acceptance before and after.

Shared by the RL comparison (PPO vs PPO+MTP vs GRPO vs GRPO+MTP) and the world-model experiment (world-model
PPO variants), so both score runs the same way. A finished run writes `result.json` and is not run again (resume).
"""

from __future__ import annotations

import time

from trl_mtp.experiments import resumable

COMMON_RL = dict(
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    dataloader_pin_memory=False,
    disable_tqdm=True,
    bf16=False,
    activation_checkpointing=False,
)
PPO_DEFAULTS = dict(
    learning_rate=3e-4,
    per_device_train_batch_size=16,
    response_length=12,
    num_ppo_epochs=2,
    temperature=1.0,
    kl_coef=0.02,
    missing_eos_penalty=1.0,
)
# 16 completions per step as PPO's 16 rollouts per iteration: 2 prompts x 8 generations
GRPO_DEFAULTS = dict(
    learning_rate=3e-4,
    per_device_train_batch_size=16,
    num_generations=8,
    generation_batch_size=16,
    max_completion_length=12,
    temperature=1.0,
    beta=0.02,
)
REWARD_KEYS = {"ppo": "objective/scores", "grpo": "reward"}


def mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def start_model(
    preset: str = "tiny-llama",
    *,
    pretrain_steps: int = 600,
    task_name: str,
    task_params: dict,
    sft_steps: int,
    head_type: str = "sequential",
    num_mtp_heads: int = 2,
    seed: int = 0,
):
    """The RL runs' common start: the cached pretrained base, MTP-SFT'd on the task for `sft_steps` (heads trained,
    saved with the model), cached."""
    from trl_mtp.experiments.sft_runs import cached_sft_model

    return cached_sft_model(
        "rl-start",
        preset=preset,
        pretrain_steps=pretrain_steps,
        tasks={task_name: task_params},
        mtp={"head_type": head_type, "num_mtp_heads": num_mtp_heads},
        steps=sft_steps,
        seed=seed,
    )


def task_acceptance(mtp_model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy self-speculative decoding of `prompts` with the model's heads, statistics pooled over every verify
    round of every prompt (`decoding.pool_acceptance`): mean accepted length (tokens per base forward, prefill
    included) and the acceptance rate of draft position i."""
    import torch

    from trl_mtp.decoding import pool_acceptance
    from trl_mtp.embedded.evaluate import left_padded_batches

    stats = []
    for enc in left_padded_batches(mtp_model, tokenizer, prompts, batch_size):
        with torch.no_grad():
            stats.append(
                mtp_model.speculative_generate(
                    enc["input_ids"],
                    enc["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )[1]
            )
    return pool_acceptance(stats)


def score(mtp_model, tokenizer, task, eval_n: int, max_new_tokens: int) -> dict:
    """Held-out greedy exact match of the base, and its heads' speculative acceptance on the same prompts."""
    from trl_mtp.embedded.evaluate import evaluate_task

    scored = evaluate_task(mtp_model.base_model, tokenizer, task, n=eval_n, max_new_tokens=max_new_tokens)
    prompts = list(task.eval(eval_n)["prompt"])
    return {
        "accuracy": scored["accuracy"],
        "correct": scored["correct"],
        **task_acceptance(mtp_model, tokenizer, prompts, max_new_tokens=max_new_tokens),
    }


def make_trainer(
    algorithm: str, base_dir, out_dir, *, seed: int, steps: int, config_fields: dict, train_dataset, tokenizer, reward
):
    """The trainer of `algorithm` ("ppo": `MTPPPOTrainer`, or `WorldModelPPOTrainer` when `config_fields` hold
    `world_model` or a `wm_*` field; "grpo": `MTPGRPOTrainer`) from the checkpoint in `base_dir`, for `steps`
    iterations with `config_fields` over the defaults above, rewarded by the TRL reward function `reward`."""
    from trl_mtp.trainers import (
        MTPGRPOConfig,
        MTPGRPOTrainer,
        MTPPPOConfig,
        MTPPPOTrainer,
        WorldModelPPOConfig,
        WorldModelPPOTrainer,
    )
    from trl_mtp.trainers.world_model_ppo_config import selects_world_model

    if algorithm not in REWARD_KEYS:
        raise ValueError(f"algorithm={algorithm!r}: choose from {sorted(REWARD_KEYS)}")
    fields = {
        **COMMON_RL,
        **(PPO_DEFAULTS if algorithm == "ppo" else GRPO_DEFAULTS),
        **config_fields,
        "output_dir": str(out_dir),
        "max_steps": steps,
        "seed": seed,
    }
    if algorithm == "grpo":
        return MTPGRPOTrainer(
            str(base_dir),
            reward_funcs=[reward],
            args=MTPGRPOConfig(**fields),
            train_dataset=train_dataset,
            processing_class=tokenizer,
        )
    world_model = selects_world_model(config_fields)
    config_cls, trainer_cls = (
        (WorldModelPPOConfig, WorldModelPPOTrainer) if world_model else (MTPPPOConfig, MTPPPOTrainer)
    )
    return trainer_cls(
        str(base_dir),
        config_cls(**fields),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        reward_funcs=[reward],
    )


def train_logged(trainer, algorithm: str, out_dir) -> tuple[float, list[dict]]:
    """Train; save the log history in `out_dir/trainer_state.json` (for `trl-mtp report`). Returns the training
    seconds and the logged steps that hold the reward."""
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.state.save_to_json(str(out_dir / "trainer_state.json"))
    return train_seconds, [h for h in trainer.state.log_history if REWARD_KEYS[algorithm] in h]


@resumable
def run_rl(
    base_dir,
    out_dir,
    *,
    algorithm: str = "ppo",
    task_name: str,
    task_params: dict,
    seed: int,
    steps: int,
    n_train: int = 1000,
    eval_n: int = 200,
    max_new_tokens: int = 12,
    record_every: int | None = None,
    **config_fields,
) -> dict:
    """`steps` iterations of `algorithm` ("ppo": `MTPPPOTrainer`, or `WorldModelPPOTrainer` when `config_fields` hold
    `world_model` or a `wm_*` field; "grpo": `MTPGRPOTrainer`) from the MTP checkpoint (or plain model) in
    `base_dir`, with `config_fields` (fields of the config of that trainer) over the defaults above.
    Returns (and stores) the training reward curve, held-out per-item correctness and the heads' acceptance, before
    and after. `record_every`: `MTPRecorder` records the heads (on a probe batch of the task and on the sampled
    rollouts) every that many iterations into `out_dir/diagnostics`, for `trl-mtp report`."""
    from transformers import AutoTokenizer

    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.model import MTPForCausalLM

    if algorithm not in REWARD_KEYS:
        raise ValueError(f"algorithm={algorithm!r}: choose from {sorted(REWARD_KEYS)}")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    task = get_task(task_name, **task_params)
    before = score(MTPForCausalLM.from_pretrained(base_dir), tokenizer, task, eval_n, max_new_tokens)
    trainer = make_trainer(
        algorithm,
        base_dir,
        out_dir,
        seed=seed,
        steps=steps,
        config_fields=config_fields,
        train_dataset=task.train(n_train),
        tokenizer=tokenizer,
        reward=task.reward,
    )
    if record_every:
        from trl_mtp.diagnostics.recorder import MTPRecorder, make_probe_batch

        trainer.add_callback(
            MTPRecorder(
                trainer.mtp_model, make_probe_batch(tokenizer, task.eval(8)), every=record_every, tokenizer=tokenizer
            )
        )
    parameters = sum(p.numel() for p in trainer.model.parameters())
    train_seconds, history = train_logged(trainer, algorithm, out_dir)
    rewards = [h[REWARD_KEYS[algorithm]] for h in history]
    after = score(trainer.mtp_model, tokenizer, task, eval_n, max_new_tokens)
    last = history[-1] if history else {}
    return {
        "algorithm": algorithm,
        "variant": config_fields,
        "mtp_config": trainer.mtp_model.mtp_config.to_dict(),
        "seed": seed,
        "steps": steps,
        "train_seconds": train_seconds,
        "parameters": parameters,
        "scores": rewards,
        "reward_mean": mean(rewards),
        "reward_last_third": mean(rewards[-max(1, len(rewards) // 3) :]),
        "accuracy": after["accuracy"],
        "correct": after["correct"],
        "accuracy_before": before["accuracy"],
        "accept_before": before["mean_accepted_length"],
        "accept_after": after["mean_accepted_length"],
        "accept_by_position_before": before["acceptance_by_position"],
        "accept_by_position_after": after["acceptance_by_position"],
        "metrics": {k: v for k, v in last.items() if k.startswith(("wm/", "val/", "loss/", "mtp/", "spec/"))},
    }


# where `**config_fields` go (the world-model config holds PPO's fields too): checked by experiment specs
run_rl.forwards_to = (
    "trl_mtp.trainers.world_model_ppo_config:WorldModelPPOConfig",
    "trl_mtp.trainers.grpo_config:MTPGRPOConfig",
)
