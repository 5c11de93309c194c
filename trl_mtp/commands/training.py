"""What the training subcommands (`sft`, `ppo`, `grpo`, `rloo`, `dpo`) share: TRL's parser with one-line errors,
`--model` and the embedded default base, embedded tasks as datasets, and a held-out score after training.

Each subcommand is `trl-mtp <name> [--config run.yaml] [fields of its config class]`, like TRL's own scripts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trl import ScriptArguments


@dataclass
class TaskScriptArguments(ScriptArguments):
    """Data and model arguments common to the training subcommands (TRL's `ScriptArguments` plus embedded tasks)."""

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


def parse(argv: list[str], dataclass_types, prog: str, embedded_defaults: dict):
    """Parse `argv` into the dataclasses (TRL's parser: `--config file.yaml`, command line wins). `--model` is an
    alias of `--model_name_or_path`; without a model, `embedded_defaults` fill the fields not given (CPU-friendly
    values for the tiny embedded base). Returns None after printing `--help`."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # one line from the dispatcher, not argparse's usage dump
            raise ValueError(message)

    parser = Parser(dataclass_types, prog=prog, epilog=(
        "--config FILE.yaml  read any of the fields above from a YAML file (TRL's parser); the command line wins. "
        "--model PATH  is short for --model_name_or_path; without it the embedded tiny base is used."))
    argv = ["--model_name_or_path" if a == "--model" else a for a in argv]
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return None
    if "--model_name_or_path" not in argv and "--config" not in argv:
        argv = [x for k, v in embedded_defaults.items() if f"--{k}" not in argv for x in (f"--{k}", str(v))] + argv
    return parser.parse_args_and_config(argv)


def load_model(script_args, model_args, training_args):
    """(MTPForCausalLM, tokenizer, model path): the user's model, or the cached embedded base."""
    from transformers import AutoTokenizer

    from trl_mtp.trainers.mtp_mixin import load_mtp_model

    if model_args.model_name_or_path is None:
        from trl_mtp.pretrain import pretrain_base

        model_path = str(pretrain_base(script_args.preset, "mix", steps=script_args.pretrain_steps, verbose=True))
    else:
        model_path = model_args.model_name_or_path
    training_args.model_init_kwargs = {k: v for k, v in dict(
        revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype, trust_remote_code=training_args.trust_remote_code).items() if v is not None}
    mtp_model = load_mtp_model(model_path, training_args)
    return mtp_model, AutoTokenizer.from_pretrained(model_path), model_path


def embedded_task(script_args, needs_prompts: str | None = None):
    """The embedded task named by `--dataset_name`, or None for a `datasets` name. `needs_prompts` (the command's
    name): the task must have prompts and answers (not the `stdlib` text corpus)."""
    from trl_mtp.tasks.registry import PROMPT_TASKS, TASKS, get_task

    if script_args.dataset_name not in TASKS:
        return None
    if needs_prompts and script_args.dataset_name not in PROMPT_TASKS:
        raise ValueError(f"dataset_name={script_args.dataset_name!r}: {needs_prompts} needs prompts with answers "
                         f"({', '.join(PROMPT_TASKS)})")
    params = json.loads(script_args.task_params) if script_args.task_params else {}
    if not isinstance(params, dict):
        raise ValueError(f"task_params={script_args.task_params!r}: expected a JSON object")
    return get_task(script_args.dataset_name, seed=script_args.task_seed, **params)


def hub_splits(script_args):
    """(train, eval or None) of a `datasets.load_dataset` dataset."""
    from datasets import load_dataset

    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    return dataset[script_args.dataset_train_split], dataset.get(script_args.dataset_test_split)


def score_and_finish(trainer, task, policy, tokenizer, script_args) -> None:
    """Save, print the held-out exact match of an embedded prompt task, and close the process group."""
    import torch.distributed as dist

    trainer.save_model(trainer.args.output_dir)
    trainer.accelerator.print(f"saved to {trainer.args.output_dir}")
    if task is not None and task.name != "stdlib" and script_args.num_eval_examples and \
            trainer.accelerator.is_main_process:
        from trl_mtp.tasks.evaluate import evaluate_task

        policy = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
        result = evaluate_task(policy, tokenizer, task, n=script_args.num_eval_examples,
                               conversational=script_args.conversational)
        print(f"{task.name} eval exact-match: {result['accuracy']:.3f} (n={result['n']})")
    if dist.is_initialized():
        dist.destroy_process_group()
