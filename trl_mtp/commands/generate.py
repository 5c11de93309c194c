"""`trl-mtp generate`: generate text with self-speculative decoding from an MTP checkpoint, print text and stats.

    trl-mtp generate --model DIR --prompt "def parse(" --max-new-tokens 64
    trl-mtp generate --model DIR --prompt "import os" --do-sample --temperature 0.8 --top-p 0.95 --seed 0
    trl-mtp generate --model DIR --prompt "sort:31,7,58=" --lookahead --beam-width 2 --branches 2 \
        --max-forwards 48 --value-task sort      # MTP-guided search, the task's reward as (oracle) value
"""

from __future__ import annotations

import json

from trl_mtp.commands.common import ArgumentParser, model_folder, positive_float, positive_int, probability
from trl_mtp.errors import UserInputError

SAMPLING_ARGS = ("temperature", "top_k", "top_p")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="trl-mtp generate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", required=True, help="directory written by MTPForCausalLM.save_pretrained / trl-mtp sft"
    )
    parser.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample (speculative rejection sampling)")
    parser.add_argument("--temperature", type=positive_float, default=None, help="with --do-sample (default 1.0)")
    parser.add_argument("--top-k", type=positive_int, default=None, help="with --do-sample: keep the k likeliest")
    parser.add_argument("--top-p", type=probability, default=None, help="with --do-sample: nucleus, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    search = parser.add_argument_group("lookahead search (trl_mtp.lookahead): heads propose, base verifies")
    search.add_argument("--lookahead", action="store_true", help="search instead of decoding")
    search.add_argument("--beam-width", type=positive_int, default=2)
    search.add_argument("--branches", type=positive_int, default=2, help="branches per node per expansion")
    search.add_argument("--max-forwards", type=positive_int, default=64, help="base row-forwards per prompt")
    search.add_argument(
        "--value-task",
        default=None,
        help="embedded task whose reward scores complete answers (an oracle verifier); "
        "default: rank by the base's log-probability",
    )
    return parser


def _lookahead(args, model, tokenizer) -> list[tuple[str, dict]]:
    """(completion, stats) per prompt from `lookahead_search`."""
    from trl_mtp.lookahead import lookahead_search

    value_fn = None
    if args.value_task is not None:
        from trl_mtp.embedded.tasks.registry import get_task

        value_fn = get_task(args.value_task).reward
    out = []
    for prompt in args.prompt:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        result = lookahead_search(
            model,
            ids,
            value_fn,
            prompt_text=prompt,
            tokenizer=tokenizer,
            beam_width=args.beam_width,
            branches=args.branches,
            max_forwards=args.max_forwards,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(
            (
                tokenizer.decode(result.completion, skip_special_tokens=True),
                {**result.stats, "value": result.value, "logprob": result.logprob},
            )
        )
    return out


def check_args(args) -> None:
    """What argparse cannot see: sampling settings without sampling (they would be ignored), and empty prompts
    (each would generate from nothing and count in the stats)."""
    given = [(name, getattr(args, name)) for name in SAMPLING_ARGS if getattr(args, name) is not None]
    if given and (not args.do_sample or args.lookahead):
        flag, value = given[0]
        raise UserInputError(
            f"--{flag.replace('_', '-')} {value} only applies to sampling: add --do-sample (without "
            "--lookahead), or leave it out"
        )
    if args.do_sample and args.lookahead:
        raise UserInputError("--do-sample: the lookahead search does not sample; leave out one of the two")
    empty = [i for i, prompt in enumerate(args.prompt, 1) if prompt == ""]
    if empty:
        raise UserInputError(
            f"--prompt '' (prompt {empty[0]} of {len(args.prompt)}) is empty: give the text to continue"
        )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    check_args(args)
    model_folder(args.model)
    import torch
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM

    model = MTPForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.lookahead:
        results = _lookahead(args, model, tokenizer)
        if args.json:
            print(
                json.dumps(
                    {"prompts": args.prompt, "completions": [t for t, _ in results], "stats": [s for _, s in results]}
                )
            )
            return 0
        for prompt, (text, stats) in zip(args.prompt, results):
            print(prompt + text)
            print(
                f"value {stats['value']}  base forwards {stats['forwards']}  expansions {stats['expansions']}  "
                f"head calls {stats['head_calls']}"
            )
            print("-" * 40)
        return 0
    batch = tokenizer(args.prompt, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(args.seed)
    sequences, stats = model.speculative_generate(
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature or 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(args.seed),
    )
    texts = tokenizer.batch_decode(sequences[:, batch["input_ids"].size(1) :], skip_special_tokens=True)
    stats = {k: v for k, v in stats.items() if k != "accepted_per_round"}
    if args.json:
        print(json.dumps({"prompts": args.prompt, "completions": texts, "stats": stats}))
        return 0
    for prompt, text in zip(args.prompt, texts):
        print(prompt + text)
        print("-" * 40)
    acc = " ".join(f"{a:.2f}" for a in stats["acceptance_by_position"])
    print(
        f"new tokens {stats['new_tokens']}  forwards {stats['forwards']}  mean accepted length "
        f"{stats['mean_accepted_length']:.2f}  acceptance by position [{acc}]  {stats['tokens_per_s']:.1f} tok/s  "
        f"({stats['wall_time_s']:.2f}s)"
    )
    return 0
