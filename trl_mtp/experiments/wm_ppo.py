"""Experiment: plain PPO vs PPO+MTP vs world-model PPO, and the world model's ablations (issue 6).

    python -m trl_mtp.experiments.wm_ppo --out runs/wm_ppo                 # the default grid; re-running resumes
    python -m trl_mtp.experiments.wm_ppo --out runs/wm_ppo --variants PPO "WM-PPO" --seeds 0 1 2

Every run starts from the same pretrained tiny base (`pretrain_base(preset, "mix")`, cached) with sequential MTP heads
(D = 2), on an embedded task, the same PPO settings and seeds; only the fields of its variant differ. Scores: the
training reward (mean `objective/scores` over the last third of the iterations; 90% bootstrap CI over seeds) and the
held-out greedy exact match on the task's eval split (90% bootstrap CI over seeds then items), with the paired
difference to plain PPO (same seeds, same items). Each finished run writes `result.json` in its folder and is skipped
next time, so an interrupted grid resumes.

The world-model variants: `WM-PPO` switches every part on (sequential prior, cosine + token-KL dynamics loss over
K = 2 steps, reward and continue heads, two-hot critic with the slow-critic regulariser, imagination H = 4, percentile
return normalisation, decoupled), except the optional discrete latent, which has a variant of its own; each ablation
turns one part off; `WM control` keeps every module and sets every world-model loss weight to 0 (parameter-matched).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trl_mtp.experiments import resumable, run_dir_name

PPO_DEFAULTS = dict(learning_rate=3e-4, per_device_train_batch_size=16, response_length=12, num_ppo_epochs=2,
                    temperature=1.0, kl_coef=0.02, missing_eos_penalty=1.0, head_type="sequential", num_mtp_heads=2,
                    mtp_lambda=0.3, logging_steps=1, save_strategy="no", report_to="none", dataloader_pin_memory=False,
                    disable_tqdm=True, bf16=False)

WM_OFF_LOSSES = dict(wm_latent_coef=0.0, wm_token_kl_coef=0.0, wm_reward_coef=0.0, wm_continue_coef=0.0,
                     wm_imagination_coef=0.0, wm_slow_critic_coef=0.0)

VARIANTS: dict[str, dict] = {
    "PPO": dict(mtp_lambda=0.0),  # the heads exist but are never trained (decoupled: they cannot touch the policy)
    "PPO+MTP coupled": dict(mode="coupled", mtp_lambda=0.1),
    "WM-PPO": dict(world_model=True),
    "WM -dynamics loss": dict(world_model=True, wm_latent_loss="none", wm_token_kl_coef=0.0),
    "WM +discrete 32x32": dict(world_model=True, wm_discrete_latent=True),
    "WM -reward/continue (H=0)": dict(world_model=True, wm_reward_head=False, wm_continue_head=False,
                                      wm_imagination_horizon=0),
    "WM H=0": dict(world_model=True, wm_imagination_horizon=0),
    "WM MSE critic": dict(world_model=True, wm_critic="scalar"),
    "WM whitening": dict(world_model=True, wm_return_norm="whiten"),
    "WM -slow critic": dict(world_model=True, wm_slow_critic_coef=0.0),
    "WM coupled": dict(world_model=True, wm_gradient="coupled", wm_repr_coef=0.1),
    "WM control (losses off)": dict(world_model=True, **WM_OFF_LOSSES),
}


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


def run_grid(out: Path, base_dir, variants, seeds, **kwargs) -> dict:
    results = {}
    for label in variants:
        for seed in seeds:
            run_dir = out / run_dir_name(label) / f"seed{seed}"
            print(f"[{label} seed {seed}]", flush=True)
            results[(label, seed)] = run_ppo(base_dir, run_dir, variant=VARIANTS[label], seed=seed, **kwargs)
    return results


def table(results: dict, seeds, reference: str = "PPO") -> str:
    from trl_mtp.experiments.bootstrap import bootstrap_ci, bootstrap_ci_seeds, bootstrap_diff_ci

    labels = list(dict.fromkeys(label for label, _ in results))
    lines = ["| variant | train reward, all iterations [90% CI] | train reward, last third [90% CI] | held-out acc "
             "[90% CI] | acc diff vs PPO [90% CI] | expl. var. (last) | params | s/run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label in labels:
        runs = [results[(label, s)] for s in seeds if (label, s) in results]
        cells = []
        for key in ("reward_mean", "reward_last_third"):
            m, lo, hi = bootstrap_ci([r[key] for r in runs])
            cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        if runs[0]["correct"]:
            m, lo, hi = bootstrap_ci_seeds([r["correct"] for r in runs])
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
            ref = [results.get((reference, s)) for s in seeds if (label, s) in results]
            if label != reference and all(ref):
                ours = [x for r in runs for x in r["correct"]]
                theirs = [x for r in ref for x in r["correct"]]
                d, dl, dh = bootstrap_diff_ci(ours, theirs)
                cells.append(f"{d:+.3f} [{dl:+.3f}, {dh:+.3f}]")
            else:
                cells.append("")
        else:
            cells += ["", ""]
        ev = [r["metrics"].get("val/explained_variance") for r in runs if r["metrics"].get("val/explained_variance") is not None]
        cells.append(f"{sum(ev) / len(ev):.2f}" if ev else "")
        cells.append(f"{runs[0]['parameters']:,}")
        cells.append(f"{sum(r['train_seconds'] for r in runs) / len(runs):.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trl_mtp.experiments.wm_ppo")
    parser.add_argument("--out", default="runs/wm_ppo")
    parser.add_argument("--preset", default="tiny-llama")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--task", default="copy")
    parser.add_argument("--task-params", default='{"length": 3}')
    parser.add_argument("--steps", type=int, default=20, help="PPO iterations per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--eval-n", type=int, default=100)
    args = parser.parse_args(argv)

    from trl_mtp.pretrain import pretrain_base

    base_dir = pretrain_base(args.preset, "mix", steps=args.pretrain_steps, seed=0)
    out = Path(args.out)
    results = run_grid(out, base_dir, args.variants, args.seeds, task_name=args.task,
                       task_params=json.loads(args.task_params), steps=args.steps, n_train=args.n_train,
                       eval_n=args.eval_n)
    text = table(results, args.seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
