"""`trl-mtp` command line: one dispatcher, one module per subcommand.

Each subcommand lives in its own module with a `main(argv) -> int` and is imported only when it runs, so
`trl-mtp --help` answers without importing torch.

What ends how:
- bad input: one line `trl-mtp <cmd>: error: ...` naming the bad value, exit code 2. Bad input is a
  `UserInputError`, or a ValueError / FileNotFoundError / NotADirectoryError raised by trl-mtp's own code (the
  project's checks raise these with a message meant for the user);
- Ctrl-C: one line saying what was kept and how to resume, exit code 130 (a training run first finishes its step
  and saves a checkpoint, see `commands/training.py`);
- anything raised inside a library (torch, transformers, ...) keeps its traceback: it is a bug or a case no check
  anticipated, and the traceback is what a bug report needs. TRL_MTP_DEBUG=1 shows the traceback of bad input too.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from trl_mtp import __version__
from trl_mtp.errors import Interrupted, UserInputError

# name -> (module, one-line help). Order is the order of `--help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("trl_mtp.commands.demo", "run the main job on the embedded default and print a table"),
    "tasks": ("trl_mtp.commands.tasks", "list the embedded tasks with a sample of each"),
    "pretrain": ("trl_mtp.commands.pretrain", "train a plain next-token base model on embedded data"),
    "sft": ("trl_mtp.commands.sft", "MTP supervised fine-tuning (TRL SFTTrainer + MTP heads)"),
    "ppo": ("trl_mtp.commands.ppo", "PPO with a critic (TRL's former PPOTrainer) + MTP heads on the rollouts"),
    "grpo": ("trl_mtp.commands.grpo", "GRPO (TRL's GRPOTrainer) + MTP heads on the sampled completions"),
    "rloo": ("trl_mtp.commands.rloo", "RLOO (TRL's RLOOTrainer) + MTP heads on the sampled completions"),
    "dpo": ("trl_mtp.commands.dpo", "DPO (TRL's DPOTrainer) + MTP heads on the chosen responses"),
    "generate": ("trl_mtp.commands.generate", "generate text with self-speculative decoding, print stats"),
    "bench": ("trl_mtp.commands.bench", "benchmarks: train-step, decode (JSON output)"),
    "probe": ("trl_mtp.commands.probe", "world-model consistency: each head vs the policy's own future"),
    "report": ("trl_mtp.commands.report", "plots and HTML pages of what the heads learned, from run folders"),
    "export": ("trl_mtp.commands.export", "write sequential heads as transformers-native MTP layers (use_mtp=True)"),
    "check": ("trl_mtp.commands.check", "run the conformance paths on a checkpoint; table of pass / refused / FAIL"),
    "experiment": ("trl_mtp.commands.experiment", "run a grid of variants x seeds from a YAML spec; tables with CIs"),
}


# what each command keeps when Ctrl-C stops it (a training run's own message, `Interrupted`, says more)
TRAINING_HINT = "the last checkpoint in --output_dir, if one was saved, resumes when the same command runs again"
RESUME_HINTS: dict[str, str] = {
    "experiment": "finished runs are kept: run the same command again to run the rest",
    "demo": "finished runs are cached: run the same command again to continue",
    **dict.fromkeys(("sft", "ppo", "grpo", "rloo", "dpo"), TRAINING_HINT),
}
PACKAGE_DIR = Path(__file__).resolve().parent


def is_user_error(err: BaseException) -> bool:
    """A UserInputError, or one of the exceptions trl-mtp's own checks raise, raised by trl-mtp's own code."""
    if isinstance(err, UserInputError):
        return True
    if not isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: trl-mtp <command> [args...]  |  trl-mtp --version",
        "",
        "Multi-token prediction on TRL.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `trl-mtp <command> --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"trl-mtp {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trl-mtp: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except (Interrupted, KeyboardInterrupt) as err:
        hint = one_line(err) if isinstance(err, Interrupted) else RESUME_HINTS.get(name, "nothing was saved")
        print(f"trl-mtp {name}: interrupted: {hint}", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err) or os.environ.get("TRL_MTP_DEBUG"):
            raise
        print(f"trl-mtp {name}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
