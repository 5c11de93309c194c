"""`trl-mtp grpo | rloo | dpo`: the MTP variants of TRL's trainers, with TRL-style arguments.

    trl-mtp grpo --dataset_name arithmetic --head_type sequential --max_steps 50
    trl-mtp dpo --model ./sft-out --dataset_name sort          # preference pairs built from an embedded task
    trl-mtp rloo --config run.yaml

GRPO and RLOO take an embedded task's prompts and exact-match reward (or a `datasets` name with a `prompt` column and
`--reward_model_path`). DPO takes a `datasets` preference dataset, or builds pairs from an embedded task: chosen = the
right answer, rejected = the same answer with one character changed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trl_mtp.commands.training import (
    TaskScriptArguments,
    embedded_task,
    hub_splits,
    load_model,
    parse,
    score_and_finish,
    train,
)

ON_POLICY_DEFAULTS = dict(
    learning_rate=1e-4,
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=16,
    max_steps=30,
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    activation_checkpointing=False,
    dataloader_pin_memory=False,
)
DPO_DEFAULTS = dict(
    learning_rate=1e-4,
    per_device_train_batch_size=8,
    max_steps=50,
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    activation_checkpointing=False,
    dataloader_pin_memory=False,
)


@dataclass
class RLScriptArguments(TaskScriptArguments):
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "GRPO/RLOO: a sequence-classification reward model (instead of the embedded task's reward)."},
    )


def preference_pairs(task, n: int, seed: int = 0):
    """A DPO dataset from a prompt task: chosen is the answer, rejected the answer with one character replaced."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for problem in task.problems("train", n):
        answer = problem.answer
        i = rng.randrange(len(answer))
        wrong = answer[:i] + rng.choice([c for c in "0123456789" if c != answer[i]]) + answer[i + 1 :]
        rows.append({"prompt": problem.prompt, "chosen": answer, "rejected": wrong})
    return Dataset.from_list(rows)


def run(method: str, argv: list[str]) -> int:
    from trl import ModelConfig, get_peft_config

    from trl_mtp import trainers

    config_cls = getattr(trainers, f"MTP{method.upper()}Config")
    trainer_cls = getattr(trainers, f"MTP{method.upper()}Trainer")
    defaults = DPO_DEFAULTS if method == "dpo" else ON_POLICY_DEFAULTS
    parsed = parse(argv, (RLScriptArguments, config_cls, ModelConfig), f"trl-mtp {method}", defaults)
    if parsed is None:
        return 0
    script_args, training_args, model_args = parsed
    task = embedded_task(script_args, needs_prompts=method)
    # the data before the model: bad input fails fast
    if task is None:
        train_dataset = hub_splits(script_args)[0]
        if method != "dpo" and script_args.reward_model_path is None:
            raise ValueError(f"dataset {script_args.dataset_name!r} is not an embedded task: give --reward_model_path")
    elif method == "dpo":
        train_dataset = preference_pairs(task, script_args.num_train_examples, script_args.task_seed)
    else:
        train_dataset = task.train(script_args.num_train_examples, conversational=script_args.conversational)
    # TRL builds a reference model (when one is needed) from the path the model was loaded from
    mtp_model, tokenizer, _ = load_model(script_args, model_args, training_args)
    peft_config = get_peft_config(model_args)
    if method == "dpo":
        trainer = trainer_cls(
            mtp_model,
            args=training_args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    else:
        reward_funcs = script_args.reward_model_path or task.reward
        trainer = trainer_cls(
            mtp_model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    train(trainer, training_args)
    score_and_finish(trainer, task, trainer.mtp_model.base_model, tokenizer, script_args)
    return 0
