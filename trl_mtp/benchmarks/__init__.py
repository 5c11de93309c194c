"""Benchmarks run by `trl-mtp bench <name>`; each module has `main(argv) -> int` and writes JSON."""
