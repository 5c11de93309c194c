"""Benchmark: RL iteration time with speculative rollouts on vs off, for MTP-PPO and MTP-GRPO.

Model: a `bench decode` model (a tiny Llama, 1.1M parameters, pretrained on the embedded mix by default, with D = 4
heads of one family self-distilled on it, `decode_models.trained_models`, cached), or with `--heads random` new untrained heads on the same base (a lower
bound: drafts that are almost never accepted). Prompts: held-out code prefixes; the reward is a stand-in (the length
of the completion), since only the time of an iteration is measured.
Settings compared, side by side in one trainer per method family (the policy moves alike under all of them):
- `off`: TRL's / PPO's own sampling (`speculative_rollouts=False`);
- `on`: `speculative_rollouts=True`, every round drafts D tokens;
- `adaptive`: `speculative_rollouts=True, adaptive_draft_tokens=True` (one planner over the run).
A callback switches the setting at the start of each iteration (the trainers read it at every rollout) and times
the iteration, from `on_step_begin` to `on_step_end`: rollout, scoring, the RL update; and, inside it, the rollout
alone (the trainer's sampling method: PPO's `generate_rollouts`, GRPO's `_generate_single_turn`), which bounds what
faster sampling can give the iteration. Protocol: one warm-up
iteration per setting, then `--repeats` repetitions, each running every setting once in a freshly shuffled order;
the speed-up of a setting in a repetition is off's time / its time, reported as median and interquartile range.
Both trainers sample `--batch` completions per iteration (GRPO: batch / num_generations prompts, each
num_generations times; PPO: batch prompts, one each) of up to `--new-tokens` tokens at their own default
temperature (GRPO 1.0, PPO 0.7), so the acceptance is that of sampling, not of greedy decoding.

    trl-mtp bench rl-rollouts --json docs/results/bench_rl_rollouts.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import torch
from transformers import TrainerCallback

from trl_mtp.benchmarks.decode import held_out_prompts, quartiles, ratio_summary
from trl_mtp.benchmarks.decode_models import trained_models
from trl_mtp.config import HEAD_TYPES

SETTINGS = {"off": (False, False), "on": (True, False), "adaptive": (True, True)}  # speculative, adaptive
TRAINERS = ("ppo", "grpo")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="trl-mtp bench rl-rollouts", description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="blockwise", choices=HEAD_TYPES, help="head family of the drafts")
    parser.add_argument("--heads", default="trained", choices=("trained", "random"))
    # the defaults are those of the `bench decode` models cached on this project's machines (base pretrained on the
    # mix, heads self-distilled 100 steps on 256 texts): reused, not retrained
    parser.add_argument("--pretrain-task", default="mix", help="the base's pretraining data ('stdlib', 'mix')")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="pretraining steps of the base")
    parser.add_argument("--head-steps", type=int, default=100, help="MTP-SFT steps of the heads")
    parser.add_argument("--head-texts", type=int, default=256, help="self-distillation texts the heads train on")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated, of {', '.join(TRAINERS)}")
    parser.add_argument("--batch", type=int, default=64, help="completions per iteration")
    parser.add_argument("--num-generations", type=int, default=8, help="GRPO: completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="max tokens per completion")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (after one warm-up per setting)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 8, 8 tokens, 2 repetitions")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.new_tokens, args.repeats, args.num_generations = 8, 8, 2, 4
    args.trainers = [t for t in args.trainers.split(",") if t]
    bad = [t for t in args.trainers if t not in TRAINERS]
    if bad:
        raise ValueError(f"--trainers: unknown {', '.join(bad)}; choose from {', '.join(TRAINERS)}")
    for name in ("batch", "num_generations", "new_tokens", "prompt_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.batch % args.num_generations:
        raise ValueError(f"--batch={args.batch}: must be a multiple of --num-generations={args.num_generations}")
    return args


class SettingSwitch(TrainerCallback):
    """Runs each iteration under the next setting of `schedule` and records its wall time under that setting, and
    the part of it spent in the rollout method wrapped by `timed`."""

    def __init__(self, schedule: list[str]):
        self.schedule, self.start, self.rollout = schedule, None, 0.0
        self.times = {name: [] for name in SETTINGS}
        self.rollout_times = {name: [] for name in SETTINGS}

    def timed(self, method):
        def rollout(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.rollout += time.perf_counter() - start

        return rollout

    def on_step_begin(self, args, state, control, **kwargs):
        args.speculative_rollouts, args.adaptive_draft_tokens = SETTINGS[self.schedule[state.global_step]]
        self.start, self.rollout = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, **kwargs):
        setting = self.schedule[state.global_step - 1]  # the trainers count the step before this call
        self.times[setting].append(time.perf_counter() - self.start)
        self.rollout_times[setting].append(self.rollout)


def length_reward(completions, **kwargs) -> list[float]:
    """A stand-in reward (the benchmark times iterations; any reward that varies gives nonzero advantages)."""
    return [len(c) / 100 for c in completions]


def build_trainer(name: str, model, tokenizer, prompts: list[str], steps: int, args, output_dir: str):
    from datasets import Dataset

    from trl_mtp import MTPGRPOConfig, MTPGRPOTrainer, MTPPPOConfig, MTPPPOTrainer

    common = dict(
        output_dir=output_dir,
        max_steps=steps,
        learning_rate=1e-6,  # the policy barely moves: every setting samples from about the same model
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        activation_checkpointing=False,
        seed=args.seed,
        per_device_train_batch_size=args.batch,
        speculative_rollouts=True,  # switched per iteration by `SettingSwitch`
        head_type=model.mtp_config.head_type,  # the heads' own architecture: RL trains all D of them
        num_mtp_heads=model.mtp_config.num_mtp_heads,
    )
    dataset = Dataset.from_dict({"prompt": prompts})
    if name == "ppo":
        config = MTPPPOConfig(**common, response_length=args.new_tokens, local_rollout_forward_batch_size=args.batch)
        trainer_cls = MTPPPOTrainer
    else:
        config = MTPGRPOConfig(
            **common,
            num_generations=args.num_generations,
            generation_batch_size=args.batch,
            max_completion_length=args.new_tokens,
            beta=0.0,
        )
        trainer_cls = MTPGRPOTrainer
    return trainer_cls(
        model, reward_funcs=[length_reward], args=config, train_dataset=dataset, processing_class=tokenizer
    )


def bench_trainer(name: str, model_dir, args, tokenizer, prompts: list[str]) -> dict:
    from trl_mtp.model import MTPForCausalLM

    model = MTPForCausalLM.from_pretrained(model_dir)
    if args.heads == "random":
        torch.manual_seed(args.seed)
        model = MTPForCausalLM.from_base(model.base_model, model.mtp_config)
    rng = random.Random(args.seed)
    schedule = list(SETTINGS) + [s for _ in range(args.repeats) for s in rng.sample(list(SETTINGS), len(SETTINGS))]
    switch = SettingSwitch(schedule)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(name, model, tokenizer, prompts, len(schedule), args, output_dir)
        trainer.add_callback(switch)
        rollout_method = "generate_rollouts" if name == "ppo" else "_generate_single_turn"  # the sampling seam
        setattr(trainer, rollout_method, switch.timed(getattr(trainer, rollout_method)))
        trainer.train()
    times = {s: t[1:] for s, t in switch.times.items()}  # the first of each is its warm-up
    rollout_times = {s: t[1:] for s, t in switch.rollout_times.items()}
    logs = [h for h in trainer.state.log_history if "train_runtime" not in h]
    by_setting = {s: [h for h, step in zip(logs, schedule[: len(logs)]) if step == s] for s in SETTINGS}
    result = {"schedule": schedule, "seconds": times, "rollout_seconds": rollout_times}
    for setting in SETTINGS:
        q1, median, q3 = quartiles(times[setting])
        result[setting] = {"median_s": median, "iqr_s": q3 - q1}
        q1, median, q3 = quartiles(rollout_times[setting])
        result[setting]["rollout_median_s"], result[setting]["rollout_iqr_s"] = median, q3 - q1
        spec_logs = [h for h in by_setting[setting] if "spec/draft_tokens" in h]
        if spec_logs:
            result[setting]["spec"] = {
                key: sum(h[key] for h in spec_logs) / len(spec_logs) for key in spec_logs[0] if key.startswith("spec/")
            }
        lengths = [h[k] for h in by_setting[setting] for k in ("completions/mean_length",) if k in h]
        if lengths:
            result[setting]["mean_completion_length"] = sum(lengths) / len(lengths)
        if setting != "off":
            result[setting]["speedup_over_off"] = ratio_summary(times["off"], times[setting])
            result[setting]["rollout_speedup_over_off"] = ratio_summary(rollout_times["off"], rollout_times[setting])
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    train = (
        dict(pretrain_steps=30, head_steps=10, n_texts=64, pretrain_task="stdlib")
        if args.quick
        else dict(
            pretrain_steps=args.pretrain_steps,
            head_steps=args.head_steps,
            n_texts=args.head_texts,
            pretrain_task=args.pretrain_task,
        )
    )
    model_dir = trained_models(families=[args.family], verbose=not args.quick, **train)[args.family]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_prompts = args.batch * (args.repeats + 1) * len(SETTINGS)  # fresh prompts for every iteration
    prompts = tokenizer.batch_decode(held_out_prompts(tokenizer, n_prompts, args.prompt_tokens))
    results = {"config": dict(vars(args)), "model_dir": str(model_dir), "load_average_start": os.getloadavg()}
    for name in args.trainers:
        results[name] = bench_trainer(name, model_dir, args, tokenizer, prompts)
        for setting in ("on", "adaptive"):
            row, off = results[name][setting], results[name]["off"]
            s, r = row["speedup_over_off"], row["rollout_speedup_over_off"]
            print(
                f"{name:5s} {setting:8s} iteration off {off['median_s']:.2f}s {setting} {row['median_s']:.2f}s "
                f"speed-up {s['median']:.2f}x (IQR {s['q1']:.2f}-{s['q3']:.2f}) | rollout off "
                f"{off['rollout_median_s']:.2f}s {setting} {row['rollout_median_s']:.2f}s speed-up {r['median']:.2f}x "
                f"(IQR {r['q1']:.2f}-{r['q3']:.2f})",
                flush=True,
            )
    results["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0
