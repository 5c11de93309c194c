"""`trl-mtp pretrain`: train a plain next-token base model on embedded data and save it."""

from __future__ import annotations

from trl_mtp.commands.common import ArgumentParser, non_negative_int, positive_int


def main(argv: list[str]) -> int:
    from trl_mtp.embedded.presets import PRESETS
    from trl_mtp.embedded.tasks import TASKS

    parser = ArgumentParser(
        prog="trl-mtp pretrain",
        description="Train a plain next-token base model on the "
        "embedded data and save it with save_pretrained (cached by arguments).",
    )
    parser.add_argument("--preset", default="tiny-llama", help=f"model preset: {', '.join(PRESETS)}")
    parser.add_argument("--task", default="mix", help=f"data: mix, {', '.join(TASKS)}")
    parser.add_argument("--steps", type=non_negative_int, default=300)
    parser.add_argument("--seq-len", type=positive_int, default=128)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default: the cache)")
    parser.add_argument("--no-cache", action="store_true", help="train even if a matching run is saved")
    args = parser.parse_args(argv)

    from trl_mtp.embedded.pretrain import pretrain_base

    out = pretrain_base(
        args.preset,
        args.task,
        steps=args.steps,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out_dir=args.out,
        cache=not args.no_cache,
        verbose=True,
    )
    print(out)
    return 0
