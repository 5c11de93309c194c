"""What the from-scratch task runs (star-graph, named-story induction, polynomial arithmetic) share around
`scratch_loop.train_rows`: right-padded token rows, the model built from a preset for the task's own vocabulary
(with MTP heads or not), and one timed training whose losses and learning curve start the run's result.
"""

from __future__ import annotations

import time

import torch

from trl_mtp.experiments.scratch_loop import train_rows
from trl_mtp.losses import IGNORE_INDEX


def pad_rows(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [N, T], labels [N, T]) from rows of (token ids, labels of the same length, IGNORE_INDEX where a
    token is not a target), padded with `pad_id` on the right; padding is not a target."""
    width = max(len(ids) for ids, _ in rows)
    inputs = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    for row, (ids, targets) in enumerate(rows):
        if len(targets) != len(ids):
            raise ValueError(f"row {row}: {len(targets)} labels for {len(ids)} tokens")
        inputs[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(targets)
    return inputs, labels


def scratch_lm(preset: str, vocab_size: int, *, eos: int, seed: int, model: dict, mtp: dict | None):
    """(net, lm): `preset` (fields overridden by `model`) initialised from `seed` for a vocabulary of `vocab_size`
    with `eos` as its end and padding token; `lm` is `net` with MTP heads (`mtp`: `MTPConfig` fields) or `net`."""
    from trl_mtp.config import MTPConfig
    from trl_mtp.embedded.presets import build_model
    from trl_mtp.model import MTPForCausalLM

    net = build_model(preset, vocab_size, seed=seed, pad_token_id=eos, eos_token_id=eos, bos_token_id=None, **model)
    if mtp is None:
        return net, net
    # the heads' new layers draw from the RNG: seeded here, or they depend on what the process ran before
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return net, MTPForCausalLM.from_base(net, MTPConfig(**mtp))


def train_scratch(net, lm, inputs, labels, *, steps, batch_size, lr, seed, mtp, curve_every=0, score=None) -> dict:
    """Train `lm` (built on `net`) with `train_rows`, timed; `score()` (a dict of metric values) is taken on `net`
    every `curve_every` steps and after the last. Returns what every from-scratch run's result starts with: seed,
    steps, mtp, num_parameters, train_seconds, final_loss (mean of the last 20 steps), losses (about 100 of them),
    final_mtp_losses and the curve ({step, metric: value} rows)."""
    from trl_mtp.embedded.presets import count_parameters

    curve = []
    start = time.time()
    trained = train_rows(
        lm,
        inputs,
        labels,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        every=curve_every if score is not None else 0,
        callback=lambda step: curve.append({"step": step, **score()}),
    )
    seconds, losses = time.time() - start, trained["losses"]
    return {
        "seed": seed,
        "steps": steps,
        "mtp": mtp,
        "num_parameters": count_parameters(net),
        "train_seconds": seconds,
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "losses": losses[:: max(1, steps // 100)],
        "final_mtp_losses": trained["mtp_losses"],
        "curve": curve,
    }
