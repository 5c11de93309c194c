"""What the training subcommands (`sft`, `ppo`, `grpo`, `rloo`, `dpo`) share: TRL's parser with one-line errors,
`--model` and the embedded default base, embedded tasks as datasets, and a held-out score after training.

Each subcommand is `trl-mtp <name> [--config run.yaml] [fields of its config class]`, like TRL's own scripts.

Interrupting and resuming: the first Ctrl-C lets the current optimizer step finish, saves a checkpoint in
`output_dir` and stops (a second Ctrl-C stops at once); running the same command again resumes from the last
checkpoint in `output_dir` (`--resume_from_checkpoint PATH` picks one, `--resume_from_checkpoint no` starts over).
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field

from transformers import TrainerCallback
from trl import ScriptArguments

from trl_mtp.errors import Interrupted, UserInputError


@dataclass
class TaskScriptArguments(ScriptArguments):
    """Data and model arguments common to the training subcommands (TRL's `ScriptArguments` plus embedded tasks)."""

    dataset_name: str | None = field(
        default="arithmetic",
        metadata={
            "help": "An embedded task (arithmetic, star_graph, sort, copy, stdlib) or a `datasets.load_dataset` name."
        },
    )
    task_params: str | None = field(
        default=None,
        metadata={"help": 'Parameters of the embedded task as JSON, e.g. \'{"degree": 3, "path_length": 5}\'.'},
    )
    task_seed: int = field(default=0, metadata={"help": "Seed of the embedded task's generator."})
    num_train_examples: int = field(default=2000, metadata={"help": "Training examples of an embedded task."})
    num_eval_examples: int = field(default=200, metadata={"help": "Eval examples of an embedded task (0: none)."})
    conversational: bool = field(default=False, metadata={"help": "Embedded task in conversational format."})
    preset: str = field(
        default="tiny-llama",
        metadata={
            "help": "Without --model: the preset of the embedded base (pretrained and cached by `trl-mtp pretrain`)."
        },
    )
    pretrain_steps: int = field(default=300, metadata={"help": "Without --model: pretraining steps of the base."})


def parse(argv: list[str], dataclass_types, prog: str, embedded_defaults: dict):
    """Parse `argv` into the dataclasses (TRL's parser: `--config file.yaml`, command line wins). `--model` is an
    alias of `--model_name_or_path`; without a model, `embedded_defaults` fill the fields not given (CPU-friendly
    values for the tiny embedded base). Returns None after printing `--help`."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # one line from the dispatcher, not argparse's usage dump
            raise UserInputError(message)

    parser = Parser(
        dataclass_types,
        prog=prog,
        epilog=(
            "--config FILE.yaml  read any of the fields above from a YAML file (TRL's parser); the command line wins. "
            "--model PATH  is short for --model_name_or_path; without it the embedded tiny base is used."
        ),
    )
    argv = ["--model_name_or_path" if a == "--model" else a for a in argv]
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return None
    if "--model_name_or_path" not in argv and "--config" not in argv:
        argv = [x for k, v in embedded_defaults.items() if f"--{k}" not in argv for x in (f"--{k}", str(v))] + argv
    try:
        with warnings.catch_warnings():
            # TRL's configs set the deprecated `gradient_checkpointing` themselves: not the user's doing
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated")
            return parser.parse_args_and_config(argv)
    except (ValueError, OSError) as err:  # a bad value or YAML file: the user's input, whoever checked it
        raise UserInputError(str(err)) from None


def load_model(script_args, model_args, training_args):
    """(MTPForCausalLM, tokenizer, model path): the user's model, or the cached embedded base."""
    from transformers import AutoTokenizer

    from trl_mtp.model import check_model_dir
    from trl_mtp.trainers.mtp_mixin import load_mtp_model

    if model_args.model_name_or_path is None:
        from trl_mtp.embedded.pretrain import pretrain_base

        model_path = str(pretrain_base(script_args.preset, "mix", steps=script_args.pretrain_steps, verbose=True))
    else:
        model_path = model_args.model_name_or_path
        check_model_dir(model_path)
    training_args.model_init_kwargs = {
        k: v
        for k, v in dict(
            revision=model_args.model_revision,
            attn_implementation=model_args.attn_implementation,
            dtype=model_args.dtype,
            trust_remote_code=training_args.trust_remote_code,
        ).items()
        if v is not None
    }
    mtp_model = load_mtp_model(model_path, training_args)
    return mtp_model, AutoTokenizer.from_pretrained(model_path), model_path


def embedded_task(script_args, needs_prompts: str | None = None):
    """The embedded task named by `--dataset_name`, or None for a `datasets` name. `needs_prompts` (the command's
    name): the task must have prompts and answers (not the `stdlib` text corpus)."""
    from trl_mtp.embedded.tasks.registry import PROMPT_TASKS, TASKS, get_task

    if script_args.dataset_name not in TASKS:
        return None
    if needs_prompts and script_args.dataset_name not in PROMPT_TASKS:
        raise ValueError(
            f"dataset_name={script_args.dataset_name!r}: {needs_prompts} needs prompts with answers "
            f"({', '.join(PROMPT_TASKS)})"
        )
    params = json.loads(script_args.task_params) if script_args.task_params else {}
    if not isinstance(params, dict):
        raise ValueError(f"task_params={script_args.task_params!r}: expected a JSON object")
    return get_task(script_args.dataset_name, seed=script_args.task_seed, **params)


def hub_splits(script_args):
    """(train, eval or None) of a `datasets.load_dataset` dataset; a name it cannot load is named, with the closest
    embedded task (a typo of one is the usual cause, and offline the hub cannot say so)."""
    from datasets import load_dataset

    from trl_mtp.embedded.tasks.registry import TASKS

    name = script_args.dataset_name
    try:
        dataset = load_dataset(name, name=script_args.dataset_config)
    except (OSError, ValueError) as err:  # not found, offline, a bad config name: datasets raises all of these
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean the embedded task {close[0]!r}?" if close else f"embedded tasks: {', '.join(TASKS)}"
        raise UserInputError(
            f"--dataset_name {name!r}: not an embedded task, and `datasets` cannot load it "
            f"({str(err).splitlines()[0]}); {hint}"
        ) from None
    if script_args.dataset_train_split not in dataset:
        raise UserInputError(
            f"--dataset_train_split {script_args.dataset_train_split!r}: {name!r} has the splits {', '.join(dataset)}"
        )
    return dataset[script_args.dataset_train_split], dataset.get(script_args.dataset_test_split)


def resume_point(args) -> str | None:
    """The checkpoint training resumes from: `--resume_from_checkpoint PATH` (or `last`); without it, the last
    `checkpoint-*` an earlier run left in `output_dir`, so that running the same command again resumes an
    interrupted run; `--resume_from_checkpoint no` starts over."""
    from transformers.trainer_utils import get_last_checkpoint

    value = args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("no", "false", "none"):
        return None
    if isinstance(value, str) and value.lower() not in ("last", "true", "yes"):
        if not os.path.isfile(os.path.join(value, "trainer_state.json")):
            raise UserInputError(f"--resume_from_checkpoint {value!r}: not a checkpoint folder (no trainer_state.json)")
        return value
    last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if last is None and value:
        raise UserInputError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {args.output_dir!r}")
    if last is not None and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"resuming from {last} (left by an earlier run in this output_dir; --resume_from_checkpoint no "
            "starts over)",
            flush=True,
        )
    return last


class StopOnCtrlC(TrainerCallback):
    """The first Ctrl-C (SIGINT) asks the trainer to finish its optimizer step, save a checkpoint and stop; the
    second one interrupts at once. Single process only: processes of a distributed run could stop at different
    steps and wait for each other forever."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print(
            "Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


def train(trainer, args) -> None:
    """`trainer.train()`, resuming from `resume_point(args)`; a Ctrl-C stop raises `Interrupted` naming the
    checkpoint it saved."""
    stop = StopOnCtrlC()
    trainer.add_callback(stop)
    trainer.train(resume_from_checkpoint=resume_point(args))
    if stop.requested:
        raise Interrupted(
            f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps} with a "
            f"checkpoint in {args.output_dir}: run the same command again to resume"
        )


def score_and_finish(trainer, task, policy, tokenizer, script_args) -> None:
    """Save, print the held-out exact match of an embedded prompt task, and close the process group."""
    import torch.distributed as dist

    trainer.save_model(trainer.args.output_dir)
    trainer.accelerator.print(f"saved to {trainer.args.output_dir}")
    if (
        task is not None
        and task.name != "stdlib"
        and script_args.num_eval_examples
        and trainer.accelerator.is_main_process
    ):
        from trl_mtp.embedded.evaluate import evaluate_task

        policy = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
        result = evaluate_task(
            policy, tokenizer, task, n=script_args.num_eval_examples, conversational=script_args.conversational
        )
        print(f"{task.name} eval exact-match: {result['accuracy']:.3f} (n={result['n']})")
    if dist.is_initialized():
        dist.destroy_process_group()
