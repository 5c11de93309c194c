"""Running the conformance paths and reading their results: the table `trl-mtp check` prints, its verdict, the
architecture x path table of docs/real_models.md, and the bf16 agreement figure.

    python -m trl_mtp.conformance                    # the architecture x path table (markdown) of the tiny models
    python -m trl_mtp.conformance --agreement bfloat16   # speculative greedy vs generate under bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import torch

from trl_mtp.conformance.paths import Result, cells, first_difference, greedy_pair, run_cell
from trl_mtp.conformance.subjects import Subject


def run(subject: Subject, paths=None, on_result=None) -> list[Result]:
    """Every cell of `subject` (only `paths` when given), in table order; `on_result(result)` after each."""
    results = []
    for path, family in cells(subject, paths):
        results.append(run_cell(subject, path, family))
        if on_result is not None:
            on_result(results[-1])
    return results


def format_acceptance(result: Result) -> str:
    return "" if result.acceptance is None else f"{result.acceptance:.2f}"


def format_table(results: list[Result]) -> str:
    """Plain-text table: path, result (pass / refused / FAIL), first-draft acceptance, and the reason or detail."""
    rows = [("path", "result", "acceptance", "")]
    rows += [
        (r.path, "FAIL" if r.status == "fail" else r.status, format_acceptance(r), r.reason or r.detail)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


def verdict(results: list[Result], has_heads: bool, min_acceptance: float = 0.0) -> str | None:
    """One line saying why the check fails (failed paths; trained heads that draft nothing on the greedy path), or
    None when it passes."""
    failed = [r for r in results if r.status == "fail"]
    if failed:
        first = failed[0]
        return f"{len(failed)} of {len(results)} paths failed; {first.path}: {first.reason}"
    greedy = [r for r in results if r.path.startswith("greedy") and r.acceptance is not None]
    if has_heads and greedy and greedy[0].acceptance <= min_acceptance:
        return (
            f"the heads draft nothing: first-draft acceptance {greedy[0].acceptance:.2f} on {greedy[0].path} "
            f"(at most {min_acceptance}); heads lost or never trained?"
        )
    return None


# ----------------------------------------------------------------------------------------------------------------------
# the architecture x path table of the tiny conformance models
# ----------------------------------------------------------------------------------------------------------------------
def markdown_checkpoints() -> str:
    """The conformance models: name, the checkpoint whose config they scale down, the settings that matter."""
    from trl_mtp.conformance.configs import CHECKPOINTS

    lines = ["| name | config of | what it brings |", "|---|---|---|"]
    lines += [f"| {name} | `{c.source}` | {c.what} |" for name, c in CHECKPOINTS.items()]
    return "\n".join(lines)


def markdown_matrix(results: dict[str, list[Result]]) -> str:
    """Rows: paths; columns: checkpoints. A cell: pass (with first-draft acceptance), refused or FAIL, with the
    reasons of refusals and failures numbered below the table (one note per kind of reason: the same words up to
    numbers and quoted names, shown with its first instance)."""
    names = list(results)
    paths = list(dict.fromkeys(r.path for rs in results.values() for r in rs))
    notes: dict[str, list] = {}  # kind of reason -> [number, first reason, the distinct reasons]

    def cell(result: Result | None) -> str:
        if result is None:
            return ""
        if result.status == "pass":
            return "pass" + (f" {result.acceptance:.2f}" if result.acceptance is not None else "")
        kind = re.sub(r"'[^']*'|\d+(\.\d+)?", "_", result.reason)
        note = notes.setdefault(kind, [len(notes) + 1, result.reason, set()])
        note[2].add(result.reason)
        return f"{'refused' if result.status == 'refused' else '**FAIL**'} ({note[0]})"

    by_path = {name: {r.path: r for r in rs} for name, rs in results.items()}
    lines = ["| path | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {p} | " + " | ".join(cell(by_path[n].get(p)) for n in names) + " |" for p in paths]
    lines += [""] + [f"({n}) {'e.g. ' if len(seen) > 1 else ''}{reason}" for n, reason, seen in notes.values()]
    return "\n".join(lines)


def autocast_agreement(
    names, families, dtype=torch.bfloat16, prompts: int = 16, new_tokens: int = 16, device="cpu", seed: int = 0
) -> dict:
    """Speculative greedy vs `generate` greedy on the tiny models, one prompt at a time (batch 1: no holes), both in
    float32 and both under `dtype` autocast: how many sequences part under autocast among those identical in float32,
    where, and the top-1 / top-2 margin of generate's autocast logits at the step where they part (against all
    steps)."""
    from trl_mtp.conformance.subjects import room, tiny_subject

    counts = dict(sequences=0, fp32_differing=0, autocast_differing=0, tokens=0, tokens_before_parting=0)
    parted_margins, margins, by_name, where_parted = [], [], {}, []
    for name in names:
        subject = tiny_subject(name, seed)
        for family in families:
            model = subject.mtp(family).to(device)
            rows, row_masks = subject.prompts([8 + i % 9 for i in range(prompts)], model.device)
            for prompt, (row, row_mask) in enumerate(zip(rows, row_masks)):
                ids = row[row_mask.bool()][None]
                mask = torch.ones_like(ids)
                new = room(model, ids.size(1), new_tokens)
                ours, _, reference = greedy_pair(model, ids, mask, new)
                counts["sequences"] += 1
                tally = by_name.setdefault(name, {"fp32_differing": 0, "autocast_differing": 0})
                if first_difference(ours, reference, ids.size(1)):
                    counts["fp32_differing"] += 1  # a bug, not precision: left out of the bf16 figure
                    tally["fp32_differing"] += 1
                    continue
                with torch.autocast(torch.device(device).type, dtype=dtype):
                    ours, _ = model.speculative_generate(ids, mask, max_new_tokens=new, do_sample=False)
                    out = model.base_model.generate(
                        ids,
                        attention_mask=mask,
                        max_new_tokens=new,
                        do_sample=False,
                        output_logits=True,
                        return_dict_in_generate=True,
                    )
                top2 = torch.stack(out.logits, 1)[0].float().topk(2, dim=-1).values  # [steps, 2]
                step_margins = top2[:, 0] - top2[:, 1]
                margins.append(step_margins)
                T, steps = ids.size(1), len(out.logits)
                width = min(ours.size(1), out.sequences.size(1))
                parted = (ours[0, T:width] != out.sequences[0, T:width]).nonzero()
                counts["tokens"] += steps
                if len(parted) or ours.size(1) != out.sequences.size(1):
                    j = int(parted[0]) if len(parted) else width - T
                    counts["autocast_differing"] += 1
                    tally["autocast_differing"] += 1
                    where_parted.append(f"{name}/{family}/prompt {prompt}")
                    counts["tokens_before_parting"] += j
                    parted_margins.append(float(step_margins[min(j, steps - 1)]))
                else:
                    counts["tokens_before_parting"] += steps
    margins = torch.cat(margins)
    compared = counts["sequences"] - counts["fp32_differing"]
    return {
        "dtype": str(dtype),
        **counts,
        "fraction_autocast_differing": counts["autocast_differing"] / max(compared, 1),
        "fraction_tokens_before_parting": counts["tokens_before_parting"] / max(counts["tokens"], 1),
        "parted_margins": sorted(round(m, 4) for m in parted_margins),
        "median_margin_all_steps": float(margins.median()),
        "fraction_steps_margin_at_most_largest_parted": float(
            (margins <= max(parted_margins, default=0)).double().mean()
        ),
        "by_checkpoint": by_name,
        "parted": where_parted,
    }


def main(argv=None) -> int:
    from trl_mtp.config import HEAD_TYPES
    from trl_mtp.conformance.configs import CHECKPOINTS
    from trl_mtp.conformance.subjects import tiny_subject

    parser = argparse.ArgumentParser(prog="python -m trl_mtp.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default=",".join(CHECKPOINTS), help="comma-separated names")
    parser.add_argument(
        "--agreement",
        choices=("bfloat16", "float16"),
        default=None,
        help="measure speculative vs generate agreement under this autocast instead of the table",
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per checkpoint and family (--agreement)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    names = args.checkpoints.split(",")
    if args.agreement:
        print(
            json.dumps(
                autocast_agreement(
                    names, HEAD_TYPES, getattr(torch, args.agreement), prompts=args.prompts, device=args.device
                ),
                indent=1,
            )
        )
        return 0
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = run(tiny_subject(name))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(markdown_checkpoints() + "\n\n" + markdown_matrix(results))
    return 0
