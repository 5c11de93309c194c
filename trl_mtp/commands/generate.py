"""`trl-mtp generate`: generate text with self-speculative decoding from an MTP checkpoint, print text and stats.

    trl-mtp generate --model DIR --prompt "def parse(" --max-new-tokens 64
    trl-mtp generate --model DIR --prompt "import os" --do-sample --temperature 0.8 --top-p 0.95 --seed 0
    trl-mtp generate --model DIR --prompt "sort:31,7,58=" --lookahead --beam-width 2 --branches 2 \
        --max-forwards 48 --value-task sort      # MTP-guided search, the task's reward as (oracle) value
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
    search = parser.add_argument_group("lookahead search (trl_mtp.lookahead): heads propose, base verifies")
    search.add_argument("--lookahead", action="store_true", help="search instead of decoding")
    search.add_argument("--beam-width", type=positive_int, default=2)
    search.add_argument("--branches", type=positive_int, default=2, help="branches per node per expansion")
    search.add_argument("--max-forwards", type=positive_int, default=64, help="base row-forwards per prompt")
    search.add_argument("--value-task", default=None,
                        help="embedded task whose reward scores complete answers (an oracle verifier); "
                             "default: rank by the base's log-probability")
    return parser


def _lookahead(args, model, tokenizer) -> list[tuple[str, dict]]:
    """(completion, stats) per prompt from `lookahead_search`."""
    from trl_mtp.lookahead import lookahead_search

    value_fn = None
    if args.value_task is not None:
        from trl_mtp.tasks.registry import get_task

        value_fn = get_task(args.value_task).reward
    out = []
    for prompt in args.prompt:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        result = lookahead_search(
            model, ids, value_fn, prompt_text=prompt, tokenizer=tokenizer, beam_width=args.beam_width,
            branches=args.branches, max_forwards=args.max_forwards, max_new_tokens=args.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out.append((tokenizer.decode(result.completion, skip_special_tokens=True),
                    {**result.stats, "value": result.value, "logprob": result.logprob}))
    return out


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
    if args.lookahead:
        results = _lookahead(args, model, tokenizer)
        if args.json:
            print(json.dumps({"prompts": args.prompt, "completions": [t for t, _ in results],
                              "stats": [s for _, s in results]}))
            return 0
        for prompt, (text, stats) in zip(args.prompt, results):
            print(prompt + text)
            print(f"value {stats['value']}  base forwards {stats['forwards']}  expansions {stats['expansions']}  "
                  f"head calls {stats['head_calls']}")
            print("-" * 40)
        return 0
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
