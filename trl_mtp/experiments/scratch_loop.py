"""The training loop of the from-scratch experiments (star-graph, named-story induction): a model trained on one
task's token rows only, with its own loss.

AdamW (weight decay on matrices only, betas 0.9 / 0.95), `pretrain.py`'s warm-up then cosine schedule, gradient
clipping at 1, batches taken in order from pre-encoded rows. `lm` is a plain causal LM (next-token loss) or an
`MTPForCausalLM` (main + lambda * MTP loss): the loop only calls `lm(input_ids=..., labels=...).loss`.
"""

from __future__ import annotations

import torch


def train_rows(
    lm,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    every: int = 0,
    callback=None,
) -> dict:
    """Train `lm` for `steps` steps on rows `[step * batch_size, (step + 1) * batch_size)` of `inputs` / `labels`.
    `callback(step)` runs every `every` steps and after the last (1-based step). Returns the loss per step and the
    last step's per-depth MTP losses (None for a plain LM)."""
    from trl_mtp.embedded.pretrain import _lr_at

    if inputs.size(0) < steps * batch_size:
        raise ValueError(f"{inputs.size(0)} rows are too few for {steps} steps of batch {batch_size}")
    decay = [p for p in lm.parameters() if p.dim() >= 2]
    no_decay = [p for p in lm.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )
    losses, mtp_losses = [], None
    lm.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, lr)
            rows = slice(step * batch_size, (step + 1) * batch_size)
            out = lm(input_ids=inputs[rows], labels=labels[rows])
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            optimizer.step()
            losses.append(round(out.loss.item(), 4))
            if getattr(out, "mtp_losses", None) is not None:
                mtp_losses = [round(x, 4) for x in out.mtp_losses.tolist()]
            if callback is not None and every and ((step + 1) % every == 0 or step + 1 == steps):
                callback(step + 1)
    return {"losses": losses, "mtp_losses": mtp_losses}
