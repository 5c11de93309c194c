"""`trl-mtp` command line: one dispatcher, one module per subcommand.

Each subcommand lives in its own module with a `main(argv) -> int` and is imported only when it runs, so
`trl-mtp --help` answers without importing torch. Bad input ends with one line naming the bad value
(`trl-mtp <cmd>: error: ...`) and exit code 2; set TRL_MTP_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

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


class UsageError(ValueError):
    """Bad input from the user: printed as one line, never as a traceback."""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: trl-mtp <command> [args...]", "", "Multi-token prediction on TRL.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `trl-mtp <command> --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trl-mtp: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("TRL_MTP_DEBUG"):
            raise
        print(f"trl-mtp {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
