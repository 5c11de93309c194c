"""`trl-mtp sft`: MTP supervised fine-tuning with TRL-style arguments, like TRL's own `sft` script.

    trl-mtp sft --dataset_name star_graph --head_type sequential --num_mtp_heads 2 --max_steps 300
    trl-mtp sft --model ./my-model --dataset_name my/dataset --use_peft --lora_r 16 --output_dir out
    trl-mtp sft --config run.yaml            # any field below, as YAML (TRL's parser); the command line wins

Model: `--model` / `--model_name_or_path` (a path or hub id, or an MTP checkpoint whose trained heads are kept);
without one, the embedded default: a tiny base from `trl-mtp pretrain` (cached), built with `--preset`.
Dataset: `--dataset_name` is an embedded task (arithmetic, star_graph, sort, copy, stdlib; `--task_params` as JSON)
or anything `datasets.load_dataset` takes. After training on an embedded task, the eval split is scored.
"""

from __future__ import annotations

import sys

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
    activation_checkpointing=False,
    dataloader_pin_memory=False,
    learning_rate=1e-3,
    per_device_train_batch_size=16,
    logging_steps=10,
    report_to="none",
)


def main(argv: list[str]) -> int:
    from trl import ModelConfig, get_peft_config

    from trl_mtp.trainers.sft_config import MTPSFTConfig
    from trl_mtp.trainers.sft_trainer import MTPSFTTrainer

    parsed = parse(argv, (TaskScriptArguments, MTPSFTConfig, ModelConfig), "trl-mtp sft", EMBEDDED_DEFAULTS)
    if parsed is None:
        return 0
    script_args, training_args, model_args = parsed
    task = embedded_task(script_args)  # the data before the model: a bad name fails before minutes of loading
    if task is None:
        train_dataset, eval_dataset = hub_splits(script_args)
    elif task.name == "stdlib":
        train_dataset, eval_dataset = (
            task.train(script_args.num_train_examples),
            task.eval(script_args.num_eval_examples),
        )
    else:
        kwargs = dict(conversational=script_args.conversational)
        train_dataset = task.train(script_args.num_train_examples, **kwargs)
        eval_dataset = task.eval(script_args.num_eval_examples, **kwargs)
    mtp_model, tokenizer, _ = load_model(script_args, model_args, training_args)

    trainer = MTPSFTTrainer(
        mtp_model,
        training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    train(trainer, training_args)
    score_and_finish(trainer, task, trainer.model, tokenizer, script_args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
