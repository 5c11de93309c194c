"""`trl-mtp grpo`: see `trl_mtp.commands.rl_variants`."""

from trl_mtp.commands.rl_variants import run


def main(argv: list[str]) -> int:
    return run("grpo", argv)
