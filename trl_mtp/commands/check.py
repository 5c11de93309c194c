"""`trl-mtp check MODEL_DIR`: run the conformance paths that apply to your own checkpoint and print a table (path,
pass / refused with the reason / FAIL, first-draft acceptance).

    trl-mtp check out/run                         # an MTP checkpoint: its own heads
    trl-mtp check out/native                      # native MTP layers (DeepSeek-V3, GLM-4.5): also stock use_mtp
    trl-mtp check path/to/base --paths greedy,sampled   # a plain base (a folder): new heads of each family

Exit code 1 with one line on stderr when a path fails, when the heads cannot be loaded, or when trained heads draft
nothing (first-draft acceptance on the greedy path at most --min-acceptance: the 0%-acceptance checkpoints whose heads
were lost on the way). The paths compare with `generate` token for token, so the model loads in float32 by default
(--dtype bfloat16 compares in bf16, where near-ties may part: see docs/real_models.md).
"""

from __future__ import annotations

import sys

from trl_mtp.commands.common import ArgumentParser

DEFAULT_PATHS = (
    "from_base",
    "greedy",
    "sampled",
    "position_limit",
    "save_load",
    "bf16",
    "native_export",
    "stock_use_mtp",
)  # sft (two optimizer steps: 4x the model's memory) runs when asked for
DTYPES = ("float32", "bfloat16", "float16")


def run_check(
    directory, paths=DEFAULT_PATHS, device=None, dtype="float32", texts=None, min_acceptance=0.0, out=print
) -> str | None:
    """Run the paths on the checkpoint in `directory`, `out` the table; -> one line saying why it fails, or None."""
    import torch
    import transformers

    from trl_mtp.conformance.report import format_table, run, verdict
    from trl_mtp.conformance.subjects import checkpoint_subject

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    subject = checkpoint_subject(directory, device=device, dtype=getattr(torch, dtype), texts=texts)
    if subject.trained:
        try:
            subject.mtp(None)
        except Exception as err:  # whatever stops the heads from loading is the finding: say it in one line
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return f"the checkpoint's heads cannot be loaded (heads lost?): {line}"
    results = run(subject, paths)
    out(format_table(results))
    return verdict(results, has_heads=subject.trained is not None, min_acceptance=min_acceptance)


def _paths(text: str) -> tuple[str, ...]:
    from trl_mtp.conformance.paths import PATHS

    names = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in names if p not in PATHS]
    if bad or not names:
        raise ValueError(f"--paths {text!r}: unknown path(s) {bad}; choose from {', '.join(PATHS)}")
    return names


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="trl-mtp check", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a checkpoint folder: an MTP run, a native MTP export, or a plain base")
    parser.add_argument(
        "--paths", default=",".join(DEFAULT_PATHS), help="comma-separated paths to run (default: all but sft)"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for more rows)")
    parser.add_argument(
        "--min-acceptance",
        type=float,
        default=0.0,
        help="fail when trained heads' first-draft acceptance is at most this (default 0)",
    )
    args = parser.parse_args(argv)
    failure = run_check(args.model, _paths(args.paths), args.device, args.dtype, args.prompt, args.min_acceptance)
    if failure:
        print(f"trl-mtp check: FAILED: {failure}", file=sys.stderr)
        return 1
    print("trl-mtp check: passed")
    return 0
