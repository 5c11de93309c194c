"""`trl-mtp export MODEL_DIR --native OUT_DIR`: write an MTP checkpoint (sequential heads on a DeepSeek-V3, GLM-4.5 or
Mellum architecture) in transformers' native MTP layout, so that stock transformers drafts with the trained layers:

    model = AutoModelForCausalLM.from_pretrained(OUT_DIR)
    model.generate(input_ids, use_mtp=True, do_sample=False)      # batch size 1 (transformers' limit)

MODEL_DIR is what our trainers save (`mtp_config.json`, `mtp_heads.safetensors`); a LoRA run's adapter is merged into
its base on the way (the adapter's `base_model_name_or_path` must point at that base). `--check` then runs
`trl-mtp check`'s greedy and stock use_mtp paths on OUT_DIR and fails (exit 1, one line) when its layers were lost or
draft nothing.
A DeepSeek/GLM model whose depth differs from the released checkpoints' (61, 92 or 46 layers) needs
`trl_mtp.native.allow_stock_mtp(model)` after loading: stock transformers looks for MTP tensors at those indices only.
"""

from __future__ import annotations

import os
import sys

from trl_mtp.commands.common import ArgumentParser, model_folder


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="trl-mtp export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an MTP checkpoint folder (trainer output_dir)")
    parser.add_argument(
        "--native", required=True, metavar="OUT_DIR", help="write a checkpoint in transformers' native MTP layout here"
    )
    parser.add_argument("--check", action="store_true", help="check the export (heads present and drafting)")
    args = parser.parse_args(argv)
    model_folder(args.model)
    from transformers import AutoTokenizer

    from trl_mtp.model import MTPForCausalLM
    from trl_mtp.native import export_native, native_layout

    lora = os.path.isfile(os.path.join(args.model, "adapter_config.json"))
    model = MTPForCausalLM.from_pretrained(args.model, merge_lora=lora)
    native_layout(model.config)  # an unsupported architecture fails before anything is written
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError):  # a checkpoint saved without its tokenizer: export the weights alone
        tokenizer = None
    keys = export_native(model, args.native, tokenizer=tokenizer)
    print(
        f"wrote {args.native}: {model.config.get_text_config().model_type}, num_mtp_layers="
        f"{model.heads.num_depths}, {len(keys)} MTP tensors" + (", LoRA adapter merged" if lora else "")
    )
    if args.check:
        from trl_mtp.commands.check import run_check

        failure = run_check(args.native, paths=("greedy", "stock_use_mtp"), device=str(model.device))
        if failure:
            print(f"trl-mtp export: --check FAILED: {failure}", file=sys.stderr)
            return 1
    return 0
