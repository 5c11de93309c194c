"""Polynomial arithmetic from scratch (Gloeckle et al. 2024): does 2-token prediction help a small model evaluate
sums and products of polynomials in F_p[X]/(X^k), in and beyond the number of operations it was trained on?

One run: a preset model trained from scratch on `PolynomialArithmetic` rows (prompt, answer, end token; one token
per symbol; only the answer and the end token are targets) with `scratch_loop.train_rows`, next-token or with MTP
heads (`mtp`: `MTPConfig` fields). Scores per held-out problem (the same problems for every seed), greedy, each
predicted coefficient fed back: `exact` (all k coefficients right) on problems with the training range of
operations, `ood_exact` on problems with `ood_ops` operations, beyond it.
"""

from __future__ import annotations

from itertools import groupby

import torch

from trl_mtp.experiments import resumable
from trl_mtp.experiments.scratch_runs import pad_rows, scratch_lm, train_scratch
from trl_mtp.losses import IGNORE_INDEX


def encode_rows(task, problems) -> list[tuple[list[int], list[int]]]:
    """(token ids, labels) per problem: prompt, answer, end token; the prompt is not a target."""
    eos = task.encode("<eos>")
    rows = []
    for problem in problems:
        prompt, answer = task.encode(problem.prompt), task.encode(problem.answer) + eos
        rows.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    return rows


@torch.no_grad()
def exact_match(model, task, problems) -> list[int]:
    """Per problem, 1 when the greedy answer (k coefficients, each fed back) is the exact result. Problems are
    batched by prompt length, so no batch needs padding."""
    from trl_mtp.experiments.star_graph_runs import greedy_paths

    was_training = model.training
    model.eval()
    scores = [0] * len(problems)
    encoded = sorted(enumerate(task.encode(p.prompt) for p in problems), key=lambda item: len(item[1]))
    for prompt_len, group in groupby(encoded, key=lambda item: len(item[1])):
        group = list(group)
        prompts = torch.tensor([prompt for _, prompt in group])
        answers = torch.tensor([task.encode(problems[i].answer) for i, _ in group])
        predicted = greedy_paths(model, torch.cat([prompts, answers], dim=1), prompt_len, teacherless=False)
        for (i, _), right in zip(group, (predicted == answers).all(dim=1).tolist()):
            scores[i] = int(right)
    model.train(was_training)
    return scores


@resumable
def run_polynomial(
    base_dir,
    out_dir,
    *,
    seed: int,
    task: dict,
    model: dict,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    eval_n: int = 500,
    ood_ops: int | None = None,
    mtp: dict | None = None,
    curve_every: int = 0,
    preset: str = "tiny-llama",
) -> dict:
    """Train `preset` (fields overridden by `model`) from scratch on polynomial arithmetic (`task` parameters;
    training problems seeded by `seed`, as is the initialisation) for `steps` steps of `batch_size` problems; score
    exact match on `eval_n` held-out problems (task seed 0, the same for every seed) and, with `ood_ops`, on
    `eval_n` held-out problems of `ood_ops` operations. `base_dir` is unused."""
    from trl_mtp.embedded.tasks.polynomial import PolynomialArithmetic

    train_task, eval_task = PolynomialArithmetic(seed=seed, **task), PolynomialArithmetic(seed=0, **task)
    if ood_ops is not None and ood_ops <= eval_task.max_ops:
        raise ValueError(f"ood_ops={ood_ops}: must be more than the training max_ops={eval_task.max_ops}")
    eos = train_task.encode("<eos>")[0]
    net, lm = scratch_lm(preset, train_task.token_vocab_size(), eos=eos, seed=seed, model=model, mtp=mtp)
    inputs, labels = pad_rows(encode_rows(train_task, train_task.problems("train", steps * batch_size)), eos)
    eval_problems = eval_task.problems("eval", eval_n)
    ood_problems = []
    if ood_ops is not None:
        ood_task = PolynomialArithmetic(seed=0, **{**task, "min_ops": ood_ops, "max_ops": ood_ops})
        ood_problems = ood_task.problems("eval", eval_n)

    def score_curve() -> dict:
        scored = exact_match(net, eval_task, eval_problems[:200])
        return {"exact": sum(scored) / len(scored)}

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
    exact = exact_match(net, eval_task, eval_problems)
    ood_exact = exact_match(net, eval_task, ood_problems) if ood_problems else []
    return {**result, "accuracy": sum(exact) / len(exact), "exact": exact, "ood_exact": ood_exact}
