"""Benchmarks run by `trl-mtp bench <name>`; each module has `main(argv) -> int` and writes JSON."""

from trl_mtp.config import HEAD_TYPES


def parse_families(text: str) -> list[str]:
    """`--families a,b`: head families to run, each one of `HEAD_TYPES` (a ValueError names an unknown one)."""
    families = [f for f in text.split(",") if f]
    bad = [f for f in families if f not in HEAD_TYPES]
    if bad:
        raise ValueError(f"--families: unknown {', '.join(bad)}; choose from {', '.join(HEAD_TYPES)}")
    return families
