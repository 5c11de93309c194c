"""`trl-mtp ppo`: PPO (TRL's former algorithm) with MTP heads, TRL-style arguments.

    trl-mtp ppo                                    # embedded world: cached tiny base, the `copy` task and its reward
    trl-mtp ppo --dataset_name arithmetic --max_steps 50 --mode coupled --mtp_lambda 0.1
    trl-mtp ppo --model ./sft-out --reward_model_path ./rm --dataset_name my/prompts --output_dir out
    trl-mtp ppo --config run.yaml                  # any field below, as YAML (TRL's parser); the command line wins
    trl-mtp ppo --world_model true --wm_imagination_horizon 4   # world-model PPO (WorldModelPPOTrainer)

Trainer: `MTPPPOTrainer` with `MTPPPOConfig`; any `--world_model` or `--wm_*` option (on the command line or in the
`--config` YAML) selects `WorldModelPPOTrainer` with `WorldModelPPOConfig` (`trl-mtp ppo --world_model true --help`
lists its fields).

Model: `--model` / `--model_name_or_path` (a path or hub id, or an MTP checkpoint whose trained heads are kept);
without one, the embedded default: a tiny base from `trl-mtp pretrain` (cached), built with `--preset`.
Reward: the embedded task's exact-match reward, or `--reward_model_path` (a sequence-classification model).
Dataset: `--dataset_name` is an embedded task (arithmetic, star_graph, sort, copy; `--task_params` as JSON) or
anything `datasets.load_dataset` takes with a `prompt` column. After training on an embedded task, the eval split is
scored with greedy decoding.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl_mtp.commands.training import (
    TaskScriptArguments,
    embedded_task,
    hub_splits,
    load_model,
    parse,
    score_and_finish,
    train,
)

EMBEDDED_DEFAULTS = dict(
    learning_rate=3e-4,
    per_device_train_batch_size=16,
    response_length=16,
    max_steps=30,
    num_ppo_epochs=2,
    temperature=1.0,
    kl_coef=0.02,
    missing_eos_penalty=1.0,
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    dataloader_pin_memory=False,
)


@dataclass
class PPOScriptArguments(TaskScriptArguments):
    dataset_name: str | None = field(
        default="copy",
        metadata={"help": "An embedded task (arithmetic, star_graph, sort, copy) or a `datasets.load_dataset` name."},
    )
    task_params: str | None = field(
        default='{"length": 3}', metadata={"help": "Parameters of the embedded task as JSON, e.g. '{\"length\": 3}'."}
    )
    num_train_examples: int = field(default=1000, metadata={"help": "Training prompts of an embedded task."})
    num_eval_examples: int = field(default=100, metadata={"help": "Eval examples of an embedded task (0: none)."})
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "A sequence-classification reward model (instead of the embedded task's reward)."},
    )
    value_model_path: str | None = field(
        default=None,
        metadata={"help": "A separate value model (sequence classification); default: a value head on the policy."},
    )


def given_fields(argv: list[str]) -> list[str]:
    """Names of the fields set by `argv`: its `--name` options and the keys of its `--config` YAML."""
    import yaml

    names = [a[2:].split("=")[0] for a in argv if a.startswith("--")]
    if "--config" in argv[:-1]:
        path = Path(argv[argv.index("--config") + 1])
        config = yaml.safe_load(path.read_text()) if path.is_file() else None  # a missing file: TRL's parser says so
        names += list(config) if isinstance(config, dict) else []
    return names


def main(argv: list[str]) -> int:
    from trl import ModelConfig, get_peft_config

    from trl_mtp.trainers import MTPPPOConfig, MTPPPOTrainer, WorldModelPPOConfig, WorldModelPPOTrainer
    from trl_mtp.trainers.world_model_ppo_config import selects_world_model

    world_model = selects_world_model(given_fields(argv))
    config_cls = WorldModelPPOConfig if world_model else MTPPPOConfig
    trainer_cls = WorldModelPPOTrainer if world_model else MTPPPOTrainer
    parsed = parse(argv, (PPOScriptArguments, config_cls, ModelConfig), "trl-mtp ppo", EMBEDDED_DEFAULTS)
    if parsed is None:
        return 0
    script_args, training_args, model_args = parsed
    task = embedded_task(script_args, needs_prompts="ppo")  # the data before the model: bad input fails fast
    if task is None:
        train_dataset, _ = hub_splits(script_args)
        if script_args.reward_model_path is None:
            raise ValueError(f"dataset {script_args.dataset_name!r} is not an embedded task: give --reward_model_path")
    else:
        train_dataset = task.train(script_args.num_train_examples, conversational=script_args.conversational)
    mtp_model, tokenizer, _ = load_model(script_args, model_args, training_args)
    reward_funcs = [task.reward] if task is not None and script_args.reward_model_path is None else None

    trainer = trainer_cls(
        mtp_model,
        training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        reward_model=script_args.reward_model_path,
        value_model=script_args.value_model_path,
        peft_config=get_peft_config(model_args),
    )
    train(trainer, training_args)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    score_and_finish(trainer, task, policy, tokenizer, script_args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
