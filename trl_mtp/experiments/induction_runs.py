"""Named-story induction from scratch (Gloeckle et al. 2024): does 2-token prediction help a small model learn
to complete a name it has seen earlier in the story?

One run: a preset model trained from scratch on `NamedStories` (one token per word, the whole story is the
target) with `scratch_loop.train_rows`, next-token or with MTP heads (`mtp`: `MTPConfig` fields). Scores, on the
same held-out stories for every seed, teacher forced: `induction` per later mention of a name, whether the
greedy next token after its first part is its second part; `first_mention` the same at first mentions (chance,
1 / second_parts: nothing to recall).
"""

from __future__ import annotations

import time

import torch

from trl_mtp.experiments import resumable
from trl_mtp.experiments.scratch_loop import train_rows
from trl_mtp.losses import IGNORE_INDEX


def pad_stories(stories, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [N, T], labels [N, T]): stories padded with `pad_id` on the right; padding is not a target."""
    width = max(len(ids) for ids, _ in stories)
    inputs = torch.full((len(stories), width), pad_id)
    labels = torch.full((len(stories), width), IGNORE_INDEX)
    for row, (ids, _) in enumerate(stories):
        inputs[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
    return inputs, labels


@torch.no_grad()
def name_completion(model, task, stories) -> dict[str, list[int]]:
    """Per later mention (`induction`) and per first mention (`first_mention`) of a name: 1 when the greedy
    prediction after its first part is its second part."""
    inputs, _ = pad_stories(stories, task.token_vocab_size() - 1)
    was_training = model.training
    model.eval()
    predicted = model(input_ids=inputs).logits.argmax(-1)
    model.train(was_training)
    firsts = {i for i, w in enumerate(task.vocab) if w.startswith("A")}
    induction, first_mention = [], []
    for row, (ids, later) in enumerate(stories):
        for pos in range(1, len(ids)):
            if ids[pos - 1] in firsts:
                hit = int(predicted[row, pos - 1].item() == ids[pos])
                (induction if pos in later else first_mention).append(hit)
    return {"induction": induction, "first_mention": first_mention}


@resumable
def run_induction(
    base_dir,
    out_dir,
    *,
    seed: int,
    task: dict,
    model: dict,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    eval_n: int = 300,
    mtp: dict | None = None,
    curve_every: int = 0,
    preset: str = "tiny-llama",
) -> dict:
    """Train `preset` (fields overridden by `model`) from scratch on named stories (`task` parameters; training
    stories seeded by `seed`, as is the initialisation) for `steps` steps; score name completion on `eval_n`
    held-out stories (task seed 0, the same for every seed). `base_dir` is unused."""
    from trl_mtp.config import MTPConfig
    from trl_mtp.embedded.presets import build_model, count_parameters
    from trl_mtp.embedded.tasks.induction import NamedStories
    from trl_mtp.model import MTPForCausalLM

    train_task, eval_task = NamedStories(seed=seed, **task), NamedStories(seed=0, **task)
    eos = train_task.token_vocab_size() - 1
    net = build_model(
        preset, train_task.token_vocab_size(), seed=seed, pad_token_id=eos, eos_token_id=eos, bos_token_id=None, **model
    )
    lm = MTPForCausalLM.from_base(net, MTPConfig(**mtp)) if mtp is not None else net
    inputs, labels = pad_stories(train_task.stories("train", steps * batch_size), eos)
    eval_stories = eval_task.stories("eval", eval_n)
    curve = []

    def score_curve(step: int):
        scored = name_completion(net, eval_task, eval_stories[:100])
        curve.append({"step": step, "induction": sum(scored["induction"]) / max(1, len(scored["induction"]))})

    start = time.time()
    trained = train_rows(
        lm,
        inputs,
        labels,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        every=curve_every,
        callback=score_curve,
    )
    train_seconds = time.time() - start
    scores = name_completion(net, eval_task, eval_stories)
    losses = trained["losses"]
    return {
        "seed": seed,
        "steps": steps,
        "mtp": mtp,
        "num_parameters": count_parameters(net),
        "train_seconds": train_seconds,
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "losses": losses[:: max(1, steps // 100)],
        "final_mtp_losses": trained["mtp_losses"],
        "curve": curve,
        "induction_accuracy": sum(scores["induction"]) / max(1, len(scores["induction"])),
        **scores,
    }
