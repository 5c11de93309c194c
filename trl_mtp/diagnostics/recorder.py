"""`MTPRecorder`: a `TrainerCallback` that records what the heads do, every N optimizer steps, cheaply.

    recorder = MTPRecorder(trainer.mtp_model, make_probe_batch(tokenizer, dataset), every=50, tokenizer=tokenizer)
    trainer.add_callback(recorder)   # any trl-mtp trainer: SFT, GRPO, RLOO, DPO, PPO

Why it is built with the `MTPForCausalLM`: a callback never sees the trainer, and the `model` it is handed is the
base with the heads attached (`mtp_heads`), a PEFT wrapper, or PPO's policy-and-value module; every trl-mtp trainer
exposes the wrapper as `trainer.mtp_model`, whose base is the very module being trained (PEFT injects in place).

At step 0 (before training), every `every` steps and at the end, on a fixed probe batch (no grad, eval mode):
- per depth (0 = main head): accuracy, NLL, mean entropy, entropy histogram, calibration bins, ECE, and the latent
  cosine between head i's hidden at t and the trunk's hidden at t+i; top-k ids/probabilities vs actual tokens for
  the first rows;
- weights: per-depth parameter norms, update norms since the last record, cosine between depths and to the base's
  last layer;
- attention maps (row 0) of the base's last layers and of the parallel / sequential heads;
- speculative-decoding acceptance by position: greedy self-speculative decoding of the probe prompts;
- RL rollouts: the policy's `generate` is observed (wrapped during training); the latest sampled rollout is scored
  by every head (what each depth predicted for the tokens actually sampled).
`record_decoding(stats)` appends acceptance stats of any other decoding run (e.g. speculative PPO rollouts).

Files under `out_dir` (default `<output_dir>/diagnostics`), format version 1:
- `meta.json`: format, version, head type, depths, vocab size, interval, probe ids/mask/labels and token strings;
- `records.jsonl`: one JSON object per record: `step`, `epoch`, `seconds` (cost of the record), `probe` (a list of
  per-depth summaries, see `stats.depth_summary`), `weights` (see `weights.WeightTracker`), `decoding`
  (`acceptance_by_position`, `mean_accepted_length`, `forwards`, `new_tokens`), `rollouts` (per-depth summaries on
  the sampled tokens, when any were seen), `snapshot` (file name or null);
- `snapshots/step_XXXXXXX.npz`: `probe_{topk_ids,topk_probs,targets,target_probs}` [D+1, R, T(, k)],
  `attn__<name>` [H, T, T] float16, `rollout_{input_ids,topk_ids,topk_probs,targets,target_probs}`; only the first
  and the `keep_snapshots - 1` latest are kept (bounded disk: a few hundred KB for tiny models);
- `decoding.jsonl`: lines appended by `record_decoding`;
- `log_history.json`: the trainer's log history at the end (the report reads it when no `trainer_state.json` was
  saved);
- `summary.json`: `records`, `recording_seconds`, `train_seconds`, `overhead_fraction` (recording / the rest).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from trl_mtp.diagnostics.attention import capture_attention
from trl_mtp.diagnostics.predictions import predict_batch
from trl_mtp.diagnostics.weights import WeightTracker

FORMAT = "trl-mtp-diagnostics"
VERSION = 1
DEFAULT_EVERY = 50


def make_probe_batch(tokenizer, examples, n: int = 8, max_length: int = 64) -> dict:
    """A fixed right-padded probe batch from the first `n` examples: strings, or rows of a TRL dataset (`text`, or
    `prompt` + `completion` as strings or chat messages). With a completion, labels cover the completion only (the
    part the model is trained to produce); otherwise every real token."""
    rows = [examples[i] for i in range(min(n, len(examples)))]
    ids, label_ids, prompt_lengths = [], [], []
    for row in rows:
        if isinstance(row, str):
            prompt, completion = "", row
        elif "completion" in row:
            prompt, completion = row.get("prompt", ""), row["completion"]
        else:
            prompt, completion = "", row["text"]
        if isinstance(completion, list):  # conversational: the chat template renders prompt and full conversation
            full = tokenizer.apply_chat_template((prompt or []) + completion, tokenize=False)
            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) if prompt else ""
            completion = full[len(prompt) :]
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None and "completion" in (row if isinstance(row, dict) else {}):
            c = c + [tokenizer.eos_token_id]
        seq = (p + c)[:max_length]
        ids.append(seq)
        label_ids.append(([-100] * len(p) + c)[:max_length])
        prompt_lengths.append(min(len(p), max_length))
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in ids]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids]),
        "labels": torch.tensor([s + [-100] * (width - len(s)) for s in label_ids]),
        "prompt_lengths": torch.tensor(prompt_lengths),
    }


def completion_mask(completion: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on sampled tokens up to and including the first EOS (generate pads after it), 0 after."""
    if not eos_ids:
        return torch.ones_like(completion)
    is_eos = torch.isin(completion, torch.tensor(eos_ids, device=completion.device))
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after).long()


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


class MTPRecorder(TrainerCallback):
    """Records the heads' predictions, weights, attention, acceptance and rollouts every `every` steps (see module).

    Args:
        mtp_model: the trainer's `MTPForCausalLM` (`trainer.mtp_model`).
        probe_batch: `input_ids`, `attention_mask` (right-padded), optional `labels` and `prompt_lengths`
            (see `make_probe_batch`).
        out_dir: where to write; default `<args.output_dir>/diagnostics`.
        every: record interval in optimizer steps (step 0 and the last step are always recorded).
        top_k, rows: top-k kept per position, for the first `rows` rows.
        attention: record attention maps; `base_attention_layers` of the trunk's last layers.
        decode_tokens: new tokens of greedy self-speculative decoding per record (0: off); prompts are the probe rows
            cut at their `prompt_lengths` (or half their length).
        rollouts: observe the policy's `generate` during training and score the latest rollout.
        keep_snapshots: number of .npz snapshots kept (the first and the latest ones).
        tokenizer: optional, for token strings in `meta.json`.
    """

    def __init__(
        self,
        mtp_model,
        probe_batch: dict,
        out_dir: str | os.PathLike | None = None,
        *,
        every: int = DEFAULT_EVERY,
        top_k: int = 5,
        rows: int = 2,
        attention: bool = True,
        base_attention_layers: int = 2,
        decode_tokens: int = 16,
        rollouts: bool = True,
        keep_snapshots: int = 4,
        tokenizer=None,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be >= 1, got {keep_snapshots}")
        self.mtp_model = mtp_model
        self.probe = {k: v for k, v in probe_batch.items()}
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every, self.top_k, self.rows = every, top_k, rows
        self.attention, self.base_attention_layers = attention, base_attention_layers
        self.decode_tokens, self.observe_rollouts, self.keep_snapshots = decode_tokens, rollouts, keep_snapshots
        self.tokenizer = tokenizer
        self.weights = WeightTracker(mtp_model)
        self.recording_seconds = 0.0
        self.records = 0
        self.last_recorded_step: int | None = None
        self.snapshots: list[Path] = []
        self.latest_rollout: dict | None = None
        self._train_start = None
        self._generate_owner = None

    # -- callback events ---------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if self.out_dir is None:
            self.out_dir = Path(args.output_dir) / "diagnostics"
        self._train_start = time.perf_counter()
        if not state.is_world_process_zero:
            return
        (self.out_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        self._write_meta()
        if self.observe_rollouts:
            self._wrap_generate()
        self.record(state.global_step, state.epoch)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self.record(state.global_step, state.epoch)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.last_recorded_step != state.global_step:
            self.record(state.global_step, state.epoch)
        self._unwrap_generate()
        train_seconds = time.perf_counter() - self._train_start
        (self.out_dir / "log_history.json").write_text(json.dumps(to_jsonable(state.log_history)))
        rest = max(train_seconds - self.recording_seconds, 1e-9)
        summary = {
            "records": self.records,
            "every": self.every,
            "recording_seconds": self.recording_seconds,
            "train_seconds": train_seconds,
            "overhead_fraction": self.recording_seconds / rest,
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    # -- recording ---------------------------------------------------------------------------------------------------
    def record(self, step: int, epoch: float | None = None) -> dict:
        """Record everything now (also callable by hand) and append it to `records.jsonl`."""
        start = time.perf_counter()
        model = self.mtp_model
        device = model.device
        batch = {k: v.to(device) for k, v in self.probe.items() if k in ("input_ids", "attention_mask", "labels")}
        arrays = {}
        with capture_attention(model, self.base_attention_layers) if self.attention else _no_maps() as maps:
            probe = predict_batch(
                model, batch["input_ids"], batch["attention_mask"], batch.get("labels"), k=self.top_k, rows=self.rows
            )
        arrays.update(_prediction_arrays("probe", probe))
        arrays.update({f"attn__{name}": m.numpy() for name, m in maps.items()})
        entry = {"step": step, "epoch": epoch, "probe": probe.summaries, "weights": self.weights()}
        if self.decode_tokens > 0:
            entry["decoding"] = self._decode_probe()
        if self.latest_rollout is not None:
            entry["rollouts"], rollout_arrays = self._score_rollout(self.latest_rollout)
            arrays.update(rollout_arrays)
            self.latest_rollout = None
        entry["snapshot"] = self._write_snapshot(step, arrays)
        entry["seconds"] = time.perf_counter() - start
        with open(self.out_dir / "records.jsonl", "a") as f:
            f.write(json.dumps(to_jsonable(entry)) + "\n")
        self.recording_seconds += entry["seconds"]
        self.records += 1
        self.last_recorded_step = step
        return entry

    def record_decoding(self, stats: dict, step: int | None = None, source: str = "decoding") -> None:
        """Append the acceptance statistics of a `speculative_generate` call to `decoding.jsonl`."""
        line = {
            "step": step,
            "source": source,
            **{
                k: stats[k]
                for k in ("acceptance_by_position", "mean_accepted_length", "forwards", "new_tokens")
                if k in stats
            },
        }
        with open(self.out_dir / "decoding.jsonl", "a") as f:
            f.write(json.dumps(to_jsonable(line)) + "\n")

    def _decode_probe(self) -> dict:
        """Greedy self-speculative decoding of the probe prompts (left-padded): acceptance by position."""
        ids, mask = self.probe["input_ids"], self.probe["attention_mask"]
        lengths = self.probe.get("prompt_lengths")
        prompts = []
        for i in range(ids.size(0)):
            real = int(mask[i].sum())
            cut = int(lengths[i]) if lengths is not None and int(lengths[i]) > 0 else max(real // 2, 1)
            prompts.append(ids[i, :cut])
        width = max(len(p) for p in prompts)
        pad = self.mtp_model.trunk.pad_token_id
        input_ids = torch.stack([torch.cat([p.new_full((width - len(p),), pad), p]) for p in prompts])
        attention_mask = torch.stack([torch.cat([p.new_zeros(width - len(p)), torch.ones_like(p)]) for p in prompts])
        _, stats = self.mtp_model.speculative_generate(
            input_ids.to(self.mtp_model.device),
            attention_mask.to(self.mtp_model.device),
            max_new_tokens=self.decode_tokens,
        )
        return {k: stats[k] for k in ("acceptance_by_position", "mean_accepted_length", "forwards", "new_tokens")}

    def _score_rollout(self, rollout: dict) -> tuple[list[dict], dict]:
        """Every head's prediction of the tokens actually sampled (labels: the sampled tokens only)."""
        prompt, prompt_mask, completion = rollout["prompt"], rollout["prompt_mask"], rollout["completion"]
        eos = self.mtp_model.base_model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        comp_mask = completion_mask(completion, eos)
        input_ids = torch.cat([prompt, completion], 1).to(self.mtp_model.device)
        mask = torch.cat([prompt_mask, comp_mask], 1).to(self.mtp_model.device)
        labels = torch.cat([torch.full_like(prompt, -100), completion.masked_fill(comp_mask == 0, -100)], 1)
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        scored = predict_batch(
            self.mtp_model,
            input_ids,
            mask,
            labels.to(input_ids.device),
            k=self.top_k,
            rows=self.rows,
            position_ids=position_ids,
        )
        arrays = _prediction_arrays("rollout", scored)
        arrays["rollout_input_ids"] = input_ids[: self.rows].cpu().numpy()
        arrays["rollout_prompt_length"] = np.array(prompt.size(1))
        return scored.summaries, arrays

    def _write_snapshot(self, step: int, arrays: dict) -> str:
        path = self.out_dir / "snapshots" / f"step_{step:07d}.npz"
        np.savez_compressed(path, **arrays)
        self.snapshots.append(path)
        while len(self.snapshots) > self.keep_snapshots:  # keep the first (untrained heads) and the latest
            self.snapshots.pop(1 if self.keep_snapshots > 1 else 0).unlink(missing_ok=True)
        return path.name

    def _write_meta(self) -> None:
        model, probe = self.mtp_model, self.probe
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "head_type": model.mtp_config.head_type,
            "num_depths": model.heads.num_depths,
            "vocab_size": model.config.get_text_config().vocab_size,
            "every": self.every,
            "top_k": self.top_k,
            "rows": self.rows,
            "probe": {k: v.tolist() for k, v in probe.items()},
        }
        if self.tokenizer is not None:
            meta["vocab"] = {"tokens": self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))}
        (self.out_dir / "meta.json").write_text(json.dumps(meta))

    # -- rollout observation -----------------------------------------------------------------------------------------
    def _wrap_generate(self) -> None:
        """Keep the latest `generate` call's prompt and sampled tokens (first `rows` rows, on CPU)."""
        base = self.mtp_model.base_model
        original = base.generate

        @functools.wraps(original)
        def generate(*args, **kwargs):
            out = original(*args, **kwargs)
            try:
                prompt = kwargs.get("input_ids", args[0] if args else None)
                if torch.is_tensor(prompt):
                    sequences = out if torch.is_tensor(out) else out.sequences
                    mask = kwargs.get("attention_mask")
                    mask = torch.ones_like(prompt) if mask is None else mask
                    r = self.rows
                    self.latest_rollout = {
                        "prompt": prompt[:r].cpu(),
                        "prompt_mask": mask[:r].cpu(),
                        "completion": sequences[:r, prompt.size(1) :].cpu(),
                    }
            except (AttributeError, IndexError):  # an output we do not understand is simply not recorded
                pass
            return out

        base.generate = generate
        self._generate_owner = base

    def _unwrap_generate(self) -> None:
        if self._generate_owner is not None:
            del self._generate_owner.generate  # the instance attribute: the class method shows again
            self._generate_owner = None


class _no_maps:
    """`capture_attention`'s stand-in when attention is off: yields an empty dict."""

    def __enter__(self):
        return {}

    def __exit__(self, *exc):
        return False


def _prediction_arrays(prefix: str, predictions) -> dict:
    return {
        f"{prefix}_topk_ids": predictions.topk_ids.cpu().numpy().astype(np.int32),
        f"{prefix}_topk_probs": predictions.topk_probs.cpu().numpy().astype(np.float16),
        f"{prefix}_targets": predictions.targets.cpu().numpy().astype(np.int32),
        f"{prefix}_target_probs": predictions.target_probs.cpu().numpy().astype(np.float16),
    }
