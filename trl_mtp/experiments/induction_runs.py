"""Named-story induction from scratch (Gloeckle et al. 2024): does 2-token prediction help a small model learn
to complete a name it has seen earlier in the story?

One run: a preset model trained from scratch on `NamedStories` (one token per word, the whole story is the
target) with `scratch_loop.train_rows`, next-token or with MTP heads (`mtp`: `MTPConfig` fields). Scores, on the
same held-out stories for every seed, teacher forced: `induction` per later mention of a name, whether the
greedy next token after its first part is its second part; `first_mention` the same at first mentions (chance,
1 / second_parts: nothing to recall).
"""

from __future__ import annotations

import torch

from trl_mtp.experiments import resumable
from trl_mtp.experiments.scratch_runs import pad_rows, scratch_lm, train_scratch


def pad_stories(stories, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [N, T], labels [N, T]): stories padded with `pad_id` on the right; every story token is a target,
    padding is not."""
    return pad_rows([(ids, ids) for ids, _ in stories], pad_id)


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
    from trl_mtp.embedded.tasks.induction import NamedStories

    train_task, eval_task = NamedStories(seed=seed, **task), NamedStories(seed=0, **task)
    eos = train_task.token_vocab_size() - 1
    net, lm = scratch_lm(preset, train_task.token_vocab_size(), eos=eos, seed=seed, model=model, mtp=mtp)
    inputs, labels = pad_stories(train_task.stories("train", steps * batch_size), eos)
    eval_stories = eval_task.stories("eval", eval_n)

    def score_curve() -> dict:
        scored = name_completion(net, eval_task, eval_stories[:100])
        return {"induction": sum(scored["induction"]) / max(1, len(scored["induction"]))}

    result = train_scratch(
        net,
        lm,
        inputs,
        labels,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        mtp=mtp,
        curve_every=curve_every,
        score=score_curve,
    )
    scores = name_completion(net, eval_task, eval_stories)
    return {**result, "induction_accuracy": sum(scores["induction"]) / max(1, len(scores["induction"])), **scores}
