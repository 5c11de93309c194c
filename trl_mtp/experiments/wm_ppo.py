"""One PPO run for the world-model experiment (issue 6): plain PPO, PPO+MTP, world-model PPO and its ablations.

The grid, its variants and its table are the spec `experiments/wm_ppo.yaml`, run by `trl-mtp experiment`. Every run
starts from the same pretrained base with sequential MTP heads (D = 2), on an embedded task, the same PPO settings;
only the PPOConfig fields of its variant differ. A finished run writes `result.json` in its folder and is skipped next
time, so an interrupted grid resumes.
"""

from __future__ import annotations

import time

from trl_mtp.experiments import resumable

PPO_DEFAULTS = dict(learning_rate=3e-4, per_device_train_batch_size=16, response_length=12, num_ppo_epochs=2,
                    temperature=1.0, kl_coef=0.02, missing_eos_penalty=1.0, head_type="sequential", num_mtp_heads=2,
                    mtp_lambda=0.3, logging_steps=1, save_strategy="no", report_to="none", dataloader_pin_memory=False,
                    disable_tqdm=True, bf16=False)


@resumable
def run_ppo(base_dir, out_dir, *, task_name: str, task_params: dict, variant: dict, seed: int, steps: int,
            n_train: int, eval_n: int) -> dict:
    """One PPO run of `steps` iterations from `base_dir`; returns (and stores) the reward curve, the held-out
    per-item correctness and the last logged world-model metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mtp.tasks.evaluate import evaluate_task
    from trl_mtp.tasks.registry import get_task
    from trl_mtp.trainers import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    task = get_task(task_name, **task_params)
    args = PPOConfig(**{**PPO_DEFAULTS, **variant, "output_dir": str(out_dir), "max_steps": steps, "seed": seed})
    trainer = PPOTrainer(model, args, train_dataset=task.train(n_train), processing_class=tokenizer,
                         reward_funcs=[task.reward])
    params = sum(p.numel() for p in trainer.model.parameters())
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    history = [h for h in trainer.state.log_history if "objective/scores" in h]
    scores = [h["objective/scores"] for h in history]
    last = history[-1] if history else {}
    scored = evaluate_task(trainer.mtp_model.base_model, tokenizer, task, n=eval_n,
                           max_new_tokens=PPO_DEFAULTS["response_length"]) if eval_n else {"accuracy": None,
                                                                                            "correct": []}
    result = {"variant": variant, "seed": seed, "steps": steps, "train_seconds": train_seconds, "parameters": params,
              "scores": scores, "reward_last_third": mean(scores[-max(1, len(scores) // 3):]),
              "reward_mean": mean(scores),
              "accuracy": scored["accuracy"], "correct": scored["correct"],
              "metrics": {k: v for k, v in last.items() if k.startswith(("wm/", "val/explained", "loss/"))}}
    return result


def mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
