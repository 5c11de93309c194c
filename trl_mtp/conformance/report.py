"""Running the conformance paths and reading their results: the table `trl-mtp check` prints, its verdict, the
architecture x path table of docs/real_models.md, and the bf16 agreement figure.

    python -m trl_mtp.conformance                    # the architecture x path table (markdown) of the tiny models
    python -m trl_mtp.conformance --bf16-agreement   # speculative greedy vs generate under bf16 autocast
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from trl_mtp.conformance.paths import Result, cells, run_cell
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
    rows += [(r.path, "FAIL" if r.status == "fail" else r.status, format_acceptance(r), r.reason or r.detail)
             for r in results]
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
        return (f"the heads draft nothing: first-draft acceptance {greedy[0].acceptance:.2f} on {greedy[0].path} "
                f"(at most {min_acceptance}); heads lost or never trained?")
    return None


# ----------------------------------------------------------------------------------------------------------------------
# the architecture x path table of the tiny conformance models
# ----------------------------------------------------------------------------------------------------------------------
def markdown_matrix(results: dict[str, list[Result]]) -> str:
    """Rows: paths; columns: checkpoints. A cell: pass (with first-draft acceptance), refused or FAIL, with the
    reasons of refusals and failures numbered below the table."""
    names = list(results)
    paths = list(dict.fromkeys(r.path for rs in results.values() for r in rs))
    notes: dict[str, int] = {}

    def cell(result: Result | None) -> str:
        if result is None:
            return ""
        if result.status == "pass":
            return "pass" + (f" {result.acceptance:.2f}" if result.acceptance is not None else "")
        n = notes.setdefault(result.reason, len(notes) + 1)
        return f"{'refused' if result.status == 'refused' else '**FAIL**'} ({n})"

    by_path = {name: {r.path: r for r in rs} for name, rs in results.items()}
    lines = ["| path | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {p} | " + " | ".join(cell(by_path[n].get(p)) for n in names) + " |" for p in paths]
    lines += [""] + [f"({n}) {reason}" for reason, n in notes.items()]
    return "\n".join(lines)


def bf16_agreement(names, families, rows: int = 16, new_tokens: int = 16, device="cpu", seed: int = 0) -> dict:
    """Speculative greedy vs `generate` greedy, both under bf16 autocast, on the tiny models: how many sequences part,
    and the top-1 / top-2 logit margin (fp32 logits of generate's prefix) where they part, against all margins."""
    from trl_mtp.conformance.subjects import room, tiny_subject

    differing = total = tokens_same = tokens_total = 0
    split_margins, all_margins = [], []
    for name in names:
        subject = tiny_subject(name, seed)
        for family in families:
            model = subject.mtp(family).to(device)
            lengths = [8 + (3 * i) % 9 for i in range(rows)]
            ids, mask = subject.prompts(lengths, model.device)
            new = room(model, ids.size(1), new_tokens)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                ours, _ = model.speculative_generate(ids, mask, max_new_tokens=new, do_sample=False)
                reference = model.base_model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
            width = min(ours.size(1), reference.size(1))
            same = ours[:, :width] == reference[:, :width]
            T = ids.size(1)
            with torch.no_grad():  # fp32 margins of the reference continuation
                full_mask = torch.cat([mask, mask.new_ones(mask.size(0), reference.size(1) - T)], dim=1)
                logits = model.base_model(reference, attention_mask=full_mask).logits[:, T - 1:-1].float()
            top2 = logits.topk(2, dim=-1).values
            margins = top2[..., 0] - top2[..., 1]  # [B, new]
            all_margins.append(margins.flatten())
            for row in range(ids.size(0)):
                parted = (~same[row, T:]).nonzero()
                total += 1
                tokens_total += width - T
                if len(parted) or ours.size(1) != reference.size(1):
                    differing += 1
                    j = int(parted[0]) if len(parted) else width - T - 1
                    tokens_same += j
                    split_margins.append(float(margins[row, j]))
                else:
                    tokens_same += width - T
    all_margins = torch.cat(all_margins)
    return {"sequences": total, "differing": differing, "fraction_differing": differing / total,
            "tokens_before_first_difference": tokens_same / tokens_total,
            "median_margin_where_parted": float(torch.tensor(split_margins).median()) if split_margins else None,
            "median_margin_all": float(all_margins.median()),
            "fraction_margins_below_0.05": float((all_margins < 0.05).double().mean())}


def main(argv=None) -> int:
    from trl_mtp.config import HEAD_TYPES
    from trl_mtp.conformance.configs import CHECKPOINTS
    from trl_mtp.conformance.subjects import tiny_subject

    parser = argparse.ArgumentParser(prog="python -m trl_mtp.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", default=",".join(CHECKPOINTS), help="comma-separated names")
    parser.add_argument("--bf16-agreement", action="store_true", help="measure bf16 agreement instead of the table")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    names = args.checkpoints.split(",")
    if args.bf16_agreement:
        print(bf16_agreement(names, HEAD_TYPES, rows=args.rows, device=args.device))
        return 0
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = run(tiny_subject(name))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(markdown_matrix(results))
    return 0
