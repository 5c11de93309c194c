"""The trained models `trl-mtp bench decode` measures: one base, one head set per family, cached.

Base: a tiny Llama pretrained on standard-library code (`pretrain_base(preset, "stdlib", ...)`). Heads: D = 4 per
family, trained with MTP-SFT (`MTPSFTTrainer`, `freeze_base=True`: the base is untouched, Medusa-1 style) in the
decoupled self-distillation mode on the base's own greedy continuations of training-split code (Medusa-2's
self-distillation data): a head is scored against what the base itself would predict, which is exactly what
speculative decoding accepts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from trl_mtp.config import HEAD_TYPES
from trl_mtp.embedded.cache import cache_root, stable_hash


def self_distill_texts(base_dir: Path, n: int, prompt_tokens: int, new_tokens: int, batch_size: int = 32) -> list[str]:
    """`n` texts: a train-split code prefix of `prompt_tokens` tokens + the base's greedy continuation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mtp.embedded.tasks.registry import get_task

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    prompts = []
    for text in get_task("stdlib").texts("train"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - prompt_tokens, 4 * prompt_tokens):  # a few windows per chunk
            prompts.append(ids[start : start + prompt_tokens])
        if len(prompts) >= n:
            break
    texts = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            batch = torch.tensor(prompts[i : i + batch_size])
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


def trained_models(
    preset: str = "tiny-llama",
    families=HEAD_TYPES,
    *,
    pretrain_steps: int = 600,
    head_steps: int = 300,
    num_heads: int = 4,
    n_texts: int = 1024,
    verbose: bool = True,
    pretrain_task: str = "stdlib",
) -> dict[str, Path]:
    """family -> directory of an `MTPForCausalLM` checkpoint (same base for all), trained now or read from the cache.
    `pretrain_task`: the base's pretraining data (`pretrain_base`'s task: 'stdlib', 'mix', ...)."""
    from trl_mtp.embedded.pretrain import pretrain_base

    base_dir = pretrain_base(preset, pretrain_task, steps=pretrain_steps, verbose=verbose)
    out: dict[str, Path] = {}
    texts = None
    for family in families:
        spec = dict(base=base_dir.name, family=family, steps=head_steps, heads=num_heads, n_texts=n_texts, version=1)
        target = cache_root() / "decode-bench" / f"{family}-{stable_hash(spec)}"
        if not (target / "mtp_config.json").exists():
            if texts is None:
                texts = self_distill_texts(base_dir, n_texts, prompt_tokens=64, new_tokens=64)
            _train_heads(base_dir, family, target, texts, head_steps, num_heads, verbose)
        out[family] = target
    return out


def _train_heads(
    base_dir: Path, family: str, target: Path, texts: list[str], steps: int, num_heads: int, verbose: bool
) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_mtp import MTPSFTConfig, MTPSFTTrainer

    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=_mkdir(target.parent)))
    args = MTPSFTConfig(
        output_dir=str(tmp),
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        logging_steps=max(1, steps // 5),
        report_to=[],
        activation_checkpointing=False,
        save_strategy="no",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=0,
        max_length=128,
        head_type=family,
        num_mtp_heads=num_heads,
        freeze_base=True,
        mode="decoupled",
        decoupled_target="self_distill",
        mtp_lambda=1.0,
    )
    trainer = MTPSFTTrainer(
        str(base_dir),
        args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=AutoTokenizer.from_pretrained(base_dir),
    )
    trainer.train()
    trainer.save_model(str(tmp))
    (tmp / "decode_bench_info.json").write_text(
        json.dumps(
            {
                "family": family,
                "steps": steps,
                "wall_time_s": round(time.time() - start, 1),
                "log": [h for h in trainer.state.log_history if "loss" in h or "mtp/loss" in h],
            },
            indent=1,
        )
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    if verbose:
        print(f"trained {family} heads in {time.time() - start:.0f}s -> {target}", flush=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
