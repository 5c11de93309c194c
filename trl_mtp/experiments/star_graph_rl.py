"""RL from the star-graph regime's models: MTP-GRPO (or our PPO) on the exact-path reward, from the NTP start and
from the MTP start, with and without MTP heads trained during RL.

The start of a run (`start` = a variant of the regime's spec, `seed`) is that regime run's model: `base_dir` is the
regime's run folder (e.g. runs/star_graph_regime), the model is trained again from the run's own `run_args.json`
(the training is deterministic for a seed) and saved once under `starts_dir`, shared by every RL variant of that
start and seed. Two checks that the start is the regime's model, or the run stops naming it: its first training
loss (step 0, within `LOSS_TOLERANCE`) is the regime run's (another initialisation or other batches differ there at
once; later losses are not compared, as Adam grows float noise, such as another thread count's summation order, to
1e-3 within a few steps), and its greedy per-item exact
match on the regime's held-out graphs agrees with the regime run's on at least `start_agreement` of the items.

Scores: greedy exact match, first step and valid arm on the same held-out graphs as the regime (before and after
RL), the training reward per iteration, and the iterations (and sampled completions) until the mean training reward
over the last `window` iterations first reaches `threshold`.
"""

from __future__ import annotations

import json
from pathlib import Path

from trl_mtp.experiments import resumable, run_dir_name
from trl_mtp.experiments.rl_runs import make_trainer, mean, run_rl, train_logged
from trl_mtp.experiments.star_graph_runs import evaluate, held_out, run_star_graph

REGIME_RUN = "trl_mtp.experiments.star_graph_runs:run_star_graph"
EARLY_LOSSES, LOSS_TOLERANCE = 1, 1e-3  # step 0's loss: the initialisation and the first batch, before any update


def path_reward(task):
    """TRL reward function: 1.0 for the exact path. Completions decode as the path's nodes separated by spaces
    (`node_tokenizer`); the task's reward reads them comma-separated, as its answers are written."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        return task.reward(prompts, [",".join(c.split()) for c in completions])

    return reward


def regime_start(regime_dir, starts_dir, start: str, seed: int) -> tuple[Path, dict, dict]:
    """(model folder, regime run kwargs, regime result) of the regime's run `start` / `seed`, its model trained again
    from the run's `run_args.json` into `starts_dir` (once: later calls read it back), its first training losses
    checked against the regime run's."""
    regime_run = Path(regime_dir) / run_dir_name(start) / f"seed{seed}"
    if not (regime_run / "result.json").exists():
        raise ValueError(f"start={start!r}, seed={seed}: {regime_run} holds no finished regime run (result.json)")
    recorded = json.loads((regime_run / "run_args.json").read_text())
    if recorded["run"] != REGIME_RUN:
        raise ValueError(f"{regime_run}: run by {recorded['run']!r}, not the star-graph regime's {REGIME_RUN!r}")
    start_dir = Path(starts_dir) / run_dir_name(start) / f"seed{seed}"
    retrained = run_star_graph(None, start_dir, **recorded["kwargs"], save_model=True)
    result = json.loads((regime_run / "result.json").read_text())
    early = list(zip(retrained["losses"], result["losses"]))[:EARLY_LOSSES]
    if not early or max(abs(a - b) for a, b in early) > LOSS_TOLERANCE:
        raise ValueError(
            f"start={start!r}, seed={seed}: the start's first training losses {retrained['losses'][:3]} differ from "
            f"the regime run's {result['losses'][:3]} ({regime_run}): it is not the regime's model"
        )
    return start_dir / "model", recorded["kwargs"], result


def agreement(a: list[int], b: list[int]) -> float:
    """Fraction of items scored the same in two per-item lists (0 when their lengths differ)."""
    return sum(x == y for x, y in zip(a, b)) / len(a) if a and len(a) == len(b) else 0.0


def iterations_to(rewards: list[float], threshold: float, window: int) -> int | None:
    """The first iteration (1-based) at which the mean reward of the last `window` iterations is >= `threshold`."""
    for i in range(window, len(rewards) + 1):
        if mean(rewards[i - window : i]) >= threshold:
            return i
    return None


@resumable
def run_star_graph_rl(
    base_dir,
    out_dir,
    *,
    start: str,
    seed: int,
    steps: int,
    starts_dir: str,
    algorithm: str = "grpo",
    n_train: int = 2000,
    start_agreement: float = 0.98,
    threshold: float = 0.75,
    window: int = 10,
    **config_fields,
) -> dict:
    """`steps` iterations of `algorithm` (`rl_runs.make_trainer`, `config_fields` over its defaults) from the
    regime's model `start` / `seed` (`base_dir`: the regime's run folder), on `n_train` training graphs of the
    seed's task, rewarded 1 for the exact path; scored on the regime's held-out graphs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mtp.embedded.tasks.registry import get_task

    model_dir, regime, regime_result = regime_start(base_dir, starts_dir, start, seed)
    eval_task, eval_problems = held_out(regime["task"], regime["eval_n"])

    def score(model) -> dict[str, list[int]]:
        return evaluate(model, eval_task, eval_problems, target="path", teacherless=False)

    before = score(AutoModelForCausalLM.from_pretrained(model_dir))  # the base of an MTP checkpoint
    agree = agreement(before["correct"], regime_result["correct"])
    if agree < start_agreement:
        raise ValueError(
            f"start={start!r}, seed={seed}: the start model agrees with the regime run on {agree:.3f} of the held-out "
            f"items (< start_agreement={start_agreement}): it is not the regime's model"
        )
    train_task = get_task("star_graph", seed=seed, **regime["task"])
    path_length = regime["task"]["path_length"]
    length_field = "max_completion_length" if algorithm == "grpo" else "response_length"
    trainer = make_trainer(
        algorithm,
        model_dir,
        out_dir,
        seed=seed,
        steps=steps,
        config_fields={length_field: path_length, **config_fields},
        train_dataset=train_task.train(n_train),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        reward=path_reward(train_task),
    )
    train_seconds, history = train_logged(trainer, algorithm, out_dir)
    rewards = [h["reward" if algorithm == "grpo" else "objective/scores"] for h in history]
    after = score(trainer.mtp_model.base_model)
    reached = iterations_to(rewards, threshold, window)
    per_iteration = trainer.args.per_device_train_batch_size
    return {
        "start": start,
        "seed": seed,
        "algorithm": algorithm,
        "variant": config_fields,
        "mtp_config": trainer.mtp_model.mtp_config.to_dict(),
        "steps": steps,
        "train_seconds": train_seconds,
        "start_agreement": agree,
        "accuracy_before": mean(before["correct"]),
        "regime_accuracy": mean(regime_result["correct"]),
        "scores": rewards,
        "reward_first_tenth": mean(rewards[: max(1, len(rewards) // 10)]),
        "reward_last_third": mean(rewards[-max(1, len(rewards) // 3) :]),
        "iterations_to_threshold": reached,
        "samples_to_threshold": None if reached is None else reached * per_iteration,
        "reached_threshold": int(reached is not None),
        "iterations_to_threshold_censored": steps + 1 if reached is None else reached,
        "accuracy": mean(after["correct"]),
        "first_step_accuracy": mean(after["first_step"]),
        "valid_rate": mean(after["valid"]),
        **after,
    }


run_star_graph_rl.forwards_to = run_rl.forwards_to  # where `**config_fields` go: checked by experiment specs
