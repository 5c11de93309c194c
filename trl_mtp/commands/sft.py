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

import json
import sys
from dataclasses import dataclass, field

EMBEDDED_DEFAULTS = dict(activation_checkpointing=False, dataloader_pin_memory=False, learning_rate=1e-3,
                         per_device_train_batch_size=16, logging_steps=10, report_to="none")


def _parser():
    from trl import ModelConfig, ScriptArguments, TrlParser

    from trl_mtp.trainers.sft_config import MTPSFTConfig

    @dataclass
    class SFTScriptArguments(ScriptArguments):
        dataset_name: str | None = field(default="arithmetic", metadata={
            "help": "An embedded task (arithmetic, star_graph, sort, copy, stdlib) or a `datasets.load_dataset` name."})
        task_params: str | None = field(default=None, metadata={
            "help": 'Parameters of the embedded task as JSON, e.g. \'{"degree": 3, "path_length": 5}\'.'})
        task_seed: int = field(default=0, metadata={"help": "Seed of the embedded task's generator."})
        num_train_examples: int = field(default=2000, metadata={"help": "Training examples of an embedded task."})
        num_eval_examples: int = field(default=200, metadata={"help": "Eval examples of an embedded task (0: none)."})
        conversational: bool = field(default=False, metadata={"help": "Embedded task in conversational format."})
        preset: str = field(default="tiny-llama", metadata={
            "help": "Without --model: the preset of the embedded base (pretrained and cached by `trl-mtp pretrain`)."})
        pretrain_steps: int = field(default=300, metadata={"help": "Without --model: pretraining steps of the base."})

    class Parser(TrlParser):
        def error(self, message):  # one line from the dispatcher, not argparse's usage dump
            raise ValueError(message)

    return Parser((SFTScriptArguments, MTPSFTConfig, ModelConfig), prog="trl-mtp sft")


def _embedded_datasets(script_args):
    from trl_mtp.tasks.registry import get_task

    params = json.loads(script_args.task_params) if script_args.task_params else {}
    if not isinstance(params, dict):
        raise ValueError(f"task_params={script_args.task_params!r}: expected a JSON object")
    task = get_task(script_args.dataset_name, seed=script_args.task_seed, **params)
    if script_args.dataset_name == "stdlib":
        return task, task.train(script_args.num_train_examples), task.eval(script_args.num_eval_examples)
    kwargs = dict(conversational=script_args.conversational)
    return task, task.train(script_args.num_train_examples, **kwargs), task.eval(script_args.num_eval_examples, **kwargs)


def main(argv: list[str]) -> int:
    from trl_mtp.tasks.registry import TASKS

    argv = ["--model_name_or_path" if a == "--model" else a for a in argv]
    parser = _parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    embedded_model = "--model_name_or_path" not in argv and "--config" not in argv
    if embedded_model:  # CPU-friendly defaults for the tiny embedded base; explicit arguments still win
        argv = [x for k, v in EMBEDDED_DEFAULTS.items() if f"--{k}" not in argv for x in (f"--{k}", str(v))] + argv
    script_args, training_args, model_args = parser.parse_args_and_config(argv)

    import torch.distributed as dist
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from trl_mtp.trainers.sft_trainer import MTPSFTTrainer

    if model_args.model_name_or_path is None:
        from trl_mtp.pretrain import pretrain_base

        model_path = str(pretrain_base(script_args.preset, "mix", steps=script_args.pretrain_steps, verbose=True))
    else:
        model_path = model_args.model_name_or_path
    from trl_mtp.trainers.mtp_mixin import load_mtp_model

    training_args.model_init_kwargs = {k: v for k, v in dict(
        revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype, trust_remote_code=training_args.trust_remote_code).items() if v is not None}
    mtp_model = load_mtp_model(model_path, training_args)
    training_args.model_init_kwargs = None  # used above; the trainer gets an instantiated model
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    task = None
    if script_args.dataset_name in TASKS:
        task, train_dataset, eval_dataset = _embedded_datasets(script_args)
    else:
        from datasets import load_dataset

        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        train_dataset = dataset[script_args.dataset_train_split]
        eval_dataset = dataset.get(script_args.dataset_test_split)

    trainer = MTPSFTTrainer(
        mtp_model, training_args, train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer, peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"saved to {training_args.output_dir}")

    if task is not None and script_args.dataset_name != "stdlib" and script_args.num_eval_examples and \
            trainer.accelerator.is_main_process:
        from trl_mtp.tasks.evaluate import evaluate_task

        model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
        result = evaluate_task(model, tokenizer, task, n=script_args.num_eval_examples,
                               conversational=script_args.conversational)
        print(f"{task.name} eval exact-match: {result['accuracy']:.3f} (n={result['n']})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
