"""Pretrain a plain next-token base model on the embedded data: the "pretrained model" post-training starts from.

A plain training loop (AdamW, warm-up then cosine decay, packed sequences): for a model this small it is the
simplest thing that is fast and deterministic on CPU. Data: `stdlib` text, one task's training split rendered
as text (prompt + completion + EOS), or `mix`: mostly stdlib plus a little of every task, so that a base knows
the formats without having solved them. Results are cached under a directory keyed by a hash of every argument.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from trl_mtp.embedded.cache import cache_root, stable_hash
from trl_mtp.embedded.presets import PRESETS, build_model
from trl_mtp.embedded.tasks.base import check_count
from trl_mtp.embedded.tasks.registry import PROMPT_TASKS, TASKS, get_task
from trl_mtp.embedded.tokenizer import get_tokenizer

DATA_SOURCES = ("mix", *TASKS)
MIX_TASK_FRACTION = 0.3  # share of `mix` tokens that are task examples, split evenly across the tasks
INFO_FILE = "pretrain_info.json"


def _documents(source: str, tokenizer, n_tokens: int, seed: int, task_params: dict) -> list[list[int]]:
    """Token lists (each ending with EOS) from `source`, at least `n_tokens` in all when the source has that many."""
    eos = tokenizer.eos_token_id
    if source == "stdlib":
        docs, total = [], 0
        for text in get_task("stdlib", seed=seed).texts("train"):
            docs.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [eos])
            total += len(docs[-1])
            if total >= n_tokens:
                break
        return docs
    task = get_task(source, seed=seed, **task_params.get(source, {}))
    probe = task.problems("train", 32)
    per_item = sum(len(tokenizer(p.prompt + p.answer)["input_ids"]) + 1 for p in probe) / len(probe)
    problems = task.problems("train", math.ceil(n_tokens / per_item * 1.05) + 1)
    ids = tokenizer([p.prompt + p.answer for p in problems], add_special_tokens=False, verbose=False)["input_ids"]
    return [x + [eos] for x in ids]


def pretraining_blocks(
    task: str, tokenizer, n_blocks: int, seq_len: int, seed: int, task_params: dict | None = None
) -> torch.Tensor:
    """[n_blocks, seq_len] token ids: documents of `task` (or `mix`) shuffled, concatenated and cut."""
    task_params = task_params or {}
    n_tokens = n_blocks * seq_len
    if task == "mix":
        per_task = int(n_tokens * MIX_TASK_FRACTION / len(PROMPT_TASKS))
        docs = _documents("stdlib", tokenizer, n_tokens - per_task * len(PROMPT_TASKS), seed, task_params)
        for name in PROMPT_TASKS:
            docs += _documents(name, tokenizer, per_task, seed, task_params)
    else:
        docs = _documents(task, tokenizer, n_tokens, seed, task_params)
    random.Random(seed).shuffle(docs)
    stream = [t for doc in docs for t in doc]
    stream = stream * math.ceil(n_tokens / max(len(stream), 1))  # a corpus shorter than asked is repeated
    return torch.tensor(stream[:n_tokens], dtype=torch.long).view(n_blocks, seq_len)


def _lr_at(step: int, steps: int, lr: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def _check_args(preset, task, steps, seq_len, batch_size, lr, seed):
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if task not in DATA_SOURCES:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(DATA_SOURCES)}")
    for name, value in (("steps", steps), ("seq_len", seq_len), ("batch_size", batch_size), ("seed", seed)):
        check_count(value, name)
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")


def pretrain_base(
    preset: str = "tiny-llama",
    task: str = "mix",
    steps: int = 300,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    out_dir: str | Path | None = None,
    cache: bool = True,
    task_params: dict | None = None,
    verbose: bool = False,
) -> Path:
    """Train a plain next-token base from `preset` on `task` data ('stdlib', a task name, or 'mix') and save it
    (model + tokenizer + `pretrain_info.json`) into `out_dir`, or into the cache keyed by all arguments.

    With `cache`, a directory that already holds a run with the same arguments is returned without training.
    `task_params` maps a task name to its parameters, e.g. {"star_graph": {"degree": 2}}.
    """
    _check_args(preset, task, steps, seq_len, batch_size, lr, seed)
    for name in task_params or {}:
        get_task(name, **task_params[name])  # fail early on unknown tasks or parameters
    tokenizer = get_tokenizer()
    args = dict(
        preset=preset,
        task=task,
        steps=steps,
        seq_len=seq_len,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        task_params=task_params or {},
    )
    key = stable_hash(
        {
            **args,
            "tokenizer": tokenizer.name_or_path.rsplit("/", 1)[-1],
            "python": sys.version,
            "torch": torch.__version__,
            "version": 1,
        }
    )
    target = Path(out_dir) if out_dir is not None else cache_root() / "pretrain" / f"{preset}-{task}-{key}"
    info_path = target / INFO_FILE
    if cache and info_path.exists() and json.loads(info_path.read_text()).get("key") == key:
        return target

    start = time.time()
    blocks = pretraining_blocks(task, tokenizer, max(steps, 1) * batch_size, seq_len, seed, task_params)
    model = build_model(preset, len(tokenizer), seed=seed, tokenizer=tokenizer)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, lr)
            batch = blocks[step * batch_size : (step + 1) * batch_size]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            if verbose and (step % max(1, steps // 10) == 0 or step == steps - 1):
                print(f"pretrain step {step + 1}/{steps} loss {losses[-1]:.3f}", flush=True)

    info = {
        "key": key,
        "args": args,
        "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None,
        "losses": losses[:: max(1, steps // 100)],
        "wall_time_s": round(time.time() - start, 2),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "tokens_seen": steps * batch_size * seq_len,
    }
    # Save into a temporary sibling, then rename: a concurrent reader never sees half a model.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
    if target.exists() and out_dir is None:
        shutil.rmtree(target)  # a stale cache entry (its key did not match)
    if target.exists():  # an explicit out_dir: move our files in, leave anything else of the user's there
        for f in tmp.iterdir():
            if (target / f.name).is_dir():
                shutil.rmtree(target / f.name)
            os.replace(f, target / f.name)
        shutil.rmtree(tmp)
    else:
        try:
            os.rename(tmp, target)
        except OSError:  # a concurrent run wrote the same cache entry first
            shutil.rmtree(tmp, ignore_errors=True)
    return target
