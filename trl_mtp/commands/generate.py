"""`trl-mtp generate`: generate text with self-speculative decoding from an MTP checkpoint, print text and stats.

    trl-mtp generate --model DIR --prompt "def parse(" --max-new-tokens 64
    trl-mtp generate --model DIR --prompt "import os" --do-sample --temperature 0.8 --top-p 0.95 --seed 0
"""

from __future__ import annotations

import json

from trl_mtp.commands.common import ArgumentParser, positive_int


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="trl-mtp generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="directory written by MTPForCausalLM.save_pretrained / trl-mtp sft")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample (speculative rejection sampling)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import os

    import torch
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM

    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"model directory {args.model!r} does not exist")
    model = MTPForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(args.prompt, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(args.seed)
    sequences, stats = model.speculative_generate(
        batch["input_ids"], batch["attention_mask"], max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(args.seed),
    )
    texts = tokenizer.batch_decode(sequences[:, batch["input_ids"].size(1):], skip_special_tokens=True)
    stats = {k: v for k, v in stats.items() if k != "accepted_per_round"}
    if args.json:
        print(json.dumps({"prompts": args.prompt, "completions": texts, "stats": stats}))
        return 0
    for prompt, text in zip(args.prompt, texts):
        print(prompt + text)
        print("-" * 40)
    acc = " ".join(f"{a:.2f}" for a in stats["acceptance_by_position"])
    print(f"new tokens {stats['new_tokens']}  forwards {stats['forwards']}  mean accepted length "
          f"{stats['mean_accepted_length']:.2f}  acceptance by position [{acc}]  {stats['tokens_per_s']:.1f} tok/s  "
          f"({stats['wall_time_s']:.2f}s)")
    return 0
