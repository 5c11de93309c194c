"""`trl-mtp probe MODEL --task NAME`: world-model consistency of a trained MTP model (see
`trl_mtp.diagnostics.consistency`): head i vs the policy's own distribution i steps ahead, by depth and position.
Writes JSON (default `MODEL/diagnostics/consistency.json`, where `trl-mtp report MODEL` finds it) and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path

from trl_mtp.commands.common import ArgumentParser, model_folder, non_negative_int, positive_float, positive_int


def main(argv: list[str]) -> int:
    from trl_mtp.embedded.tasks.registry import TASKS

    parser = ArgumentParser(
        prog="trl-mtp probe",
        description="Compare each MTP head with the policy's own future "
        "(sampled rollouts): KL, top-1 agreement and accuracy by depth and position.",
    )
    parser.add_argument("model", help="an MTP checkpoint folder (mtp_config.json + mtp_heads.safetensors)")
    parser.add_argument("--task", default="arithmetic", choices=list(TASKS), help="where the prefixes come from")
    parser.add_argument("--n", type=positive_int, default=16, help="eval examples of the task")
    parser.add_argument("--positions", type=positive_int, default=8, help="prefix positions per example")
    parser.add_argument("--samples", type=positive_int, default=64, help="policy rollouts per prefix")
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", default=None, help="output JSON (default MODEL/diagnostics/consistency.json)")
    args = parser.parse_args(argv)
    model_dir = Path(model_folder(args.model))

    from transformers import AutoTokenizer

    from trl_mtp.diagnostics.consistency import consistency_probe, task_contexts
    from trl_mtp.embedded.tasks.registry import get_task
    from trl_mtp.model import MTPForCausalLM

    model = MTPForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = task_contexts(get_task(args.task, seed=args.seed), tokenizer, args.n, args.positions)
    result = consistency_probe(
        model,
        data["contexts"],
        targets=data["targets"],
        positions=data["positions"],
        sequences=data["sequences"],
        n_samples=args.samples,
        temperature=args.temperature,
        seed=args.seed,
    )
    result["settings"].update(task=args.task, model=str(model_dir))
    out = Path(args.out) if args.out else model_dir / "diagnostics" / "consistency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    latent = {e["depth"]: e.get("latent_cos") for e in result.get("latent", [])}
    print("depth  KL(policy||head)  agree  head acc  policy acc  latent cos")
    for e in result["by_depth"]:
        cos = latent.get(e["depth"])
        print(
            f"{e['depth']:>5}  {e['kl']:>16.4f}  {e['agree']:>5.2f}  {e.get('head_correct', float('nan')):>8.2f}"
            f"  {e.get('policy_correct', float('nan')):>10.2f}  {'' if cos is None else f'{cos:.3f}':>10}"
        )
    print(f"wrote {out}")
    return 0
