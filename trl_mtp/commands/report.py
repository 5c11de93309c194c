"""`trl-mtp report RUN_DIR [RUN_DIR ...]`: PNG plots and HTML pages (one per run, one comparison page) from run
folders written by trl-mtp trainers with `MTPRecorder` (and `trl-mtp probe`). Prints the comparison page's path."""

from __future__ import annotations

from trl_mtp.commands.common import ArgumentParser
from trl_mtp.errors import UserInputError


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="trl-mtp report", description="Plots and HTML pages of what the MTP heads learned.")
    parser.add_argument("runs", nargs="+", help="run folders (trainer output_dir)")
    parser.add_argument(
        "--out", default=None, help="output folder (default RUN_DIR/report for one run, ./mtp-report for several)"
    )
    parser.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="one name per run, by what it is, e.g. 'MTP-SFT sequential D=2' (default: the folder names)",
    )
    args = parser.parse_args(argv)
    from pathlib import Path

    from trl_mtp.diagnostics.report import write_report

    out = args.out or (str(Path(args.runs[0]) / "report") if len(args.runs) == 1 else "mtp-report")
    if args.names is not None and len(args.names) != len(args.runs):
        raise UserInputError(f"--names: {len(args.names)} names for {len(args.runs)} runs; give one per run")
    print(write_report(args.runs, out, args.names))
    return 0
