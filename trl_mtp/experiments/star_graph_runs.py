"""Star-graph path finding from scratch, one token per node: where teacher-forced next-token training stalls.

Bachmann & Nagarajan 2024: with teacher forcing, every node of the path after the first step is the unique child
of the node before it (the "Clever Hans" cheat), so the loss leaves only the first step to learn, and a model that
has learnt the cheat picks that step at chance: exact match near 1/degree. One run: a preset model trained from
scratch on fresh training problems with `scratch_loop.train_rows` (AdamW, warm-up then cosine), the loss being
the model's own: the base model's next-token cross-entropy on the path, or `MTPForCausalLM`'s
main + lambda * MTP loss. What differs between runs:

  `mtp`          MTP heads (`MTPConfig` fields): depth i at the last prompt position predicts node i+1 of the path
                 from the graph alone, the teacherless signal, as an auxiliary loss of a teacher-forced model
  `teacherless`  Bachmann & Nagarajan's teacherless objective: the path's input tokens are the dummy `$`, so every
                 node is predicted from the graph alone (scored the same way: one forward over prompt + `$`s)
  `target`       "path", or "reversed" (goal to start: each step is then the unique parent of the last; a control
                 the cheat solves)

Scores per eval item (the same items for every seed): exact match of the greedy path, the first step after the
start right, and the path valid (a real arm from the start: the cheat's answer, right half the time at degree 2).
`save_model=True` also saves the trained model with `node_tokenizer` (the same encoding as a Hugging Face
tokenizer), so that RL trainers can start from it (`star_graph_rl`).
"""

from __future__ import annotations

import torch

from trl_mtp.experiments import resumable
from trl_mtp.experiments.scratch_runs import scratch_lm, train_scratch
from trl_mtp.losses import IGNORE_INDEX

TARGETS = ("path", "reversed")


def node_tokenizer(task):
    """`task`'s one-token-per-node encoding as a Hugging Face tokenizer, for trainers that tokenize prompt strings:
    `encode_prompt` ("graph:" dropped, then each node and symbol one token) and the path's nodes decoded separated
    by spaces. `<eos>` ends and pads (the models here never learnt a BOS)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trl_mtp.embedded.tasks.star_graph import SYMBOLS

    vocab = {str(node): node for node in range(task.nodes)} | {s: task.symbol_id(s) for s in SYMBOLS}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.normalizer = normalizers.Replace("graph:", "")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d+|[>,|=$]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


def held_out(task: dict, eval_n: int):
    """The star-graph task of `task` settings that holds the eval items, and its first `eval_n` eval problems: the
    same for every seed and every run that scores on them."""
    from trl_mtp.embedded.tasks.registry import get_task

    eval_task = get_task("star_graph", seed=0, **task)
    return eval_task, eval_task.problems("eval", eval_n)


def encode_problems(task, problems, *, target: str = "path", teacherless: bool = False):
    """(input_ids [N, P+L], labels [N, P+L], P): prompt then path, one token per node; labels only on the path.
    Teacherless inputs carry `$` in place of the path (the labels stay the path)."""
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: choose from {', '.join(TARGETS)}")
    prompts = [task.encode_prompt(p.prompt) for p in problems]
    paths = [task.encode_path(p.answer)[:: -1 if target == "reversed" else 1] for p in problems]
    prompt_len = len(prompts[0])  # every graph of a task has the same number of edges, so the same length
    labels = torch.tensor([prompt + path for prompt, path in zip(prompts, paths)])
    input_ids = labels.clone()
    labels[:, :prompt_len] = IGNORE_INDEX
    if teacherless:
        input_ids[:, prompt_len:] = task.symbol_id("$")
    return input_ids, labels, prompt_len


@torch.no_grad()
def greedy_paths(model, input_ids: torch.Tensor, prompt_len: int, teacherless: bool) -> torch.Tensor:
    """[N, L] predicted path: node by node, each fed back (teacher-forced models), or in one forward over the
    prompt and the `$`s (teacherless models, as they were trained)."""
    path_len = input_ids.size(1) - prompt_len
    if teacherless:
        logits = model(input_ids=input_ids).logits
        return logits[:, prompt_len - 1 : -1].argmax(-1)
    x = input_ids[:, :prompt_len]
    for _ in range(path_len):
        x = torch.cat([x, model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[:, prompt_len:]


def score_paths(task, problems, predicted: torch.Tensor, target: str) -> dict[str, list[int]]:
    """Per item: `correct` (exact match), `first_step` (the node after the start right), `valid` (the prediction is
    an arm of the graph from the start, whatever arm)."""
    correct, first_step, valid = [], [], []
    for problem, pred in zip(problems, predicted.tolist()):
        path = task.encode_path(problem.answer)
        forward = pred[::-1] if target == "reversed" else pred
        prompt = task.encode_prompt(problem.prompt)
        edge_sep = task.symbol_id("|")
        edges = prompt[: prompt.index(edge_sep)]
        edge_set = {(edges[i], edges[i + 2]) for i in range(0, len(edges), 4)}  # a > b , ...
        correct.append(int(forward == path))
        first_step.append(int(forward[1] == path[1]))
        valid.append(int(forward[0] == path[0] and all(e in edge_set for e in zip(forward, forward[1:]))))
    return {"correct": correct, "first_step": first_step, "valid": valid}


def evaluate(model, task, problems, *, target: str, teacherless: bool) -> dict[str, list[int]]:
    input_ids, _, prompt_len = encode_problems(task, problems, target=target, teacherless=teacherless)
    was_training = model.training
    model.eval()
    scores = score_paths(task, problems, greedy_paths(model, input_ids, prompt_len, teacherless), target)
    model.train(was_training)
    return scores


@resumable
def run_star_graph(
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
    mtp: dict | None = None,
    teacherless: bool = False,
    target: str = "path",
    curve_every: int = 0,
    preset: str = "tiny-llama",
    save_model: bool = False,
) -> dict:
    """Train `preset` (config fields overridden by `model`) from scratch on star-graph `task` for `steps` steps of
    `batch_size` fresh training problems (seeded by `seed`, as is the model's initialisation) and score it on
    `eval_n` held-out problems (the same for every seed). `base_dir` is unused: nothing is pretrained.
    `curve_every`: also score the first 200 eval items every that many steps (the learning curve).
    `save_model`: also save the trained model (with its heads, if any) and `node_tokenizer` in `out_dir/model`."""
    from trl_mtp.embedded.tasks.registry import get_task

    if mtp is not None and teacherless:
        raise ValueError("mtp and teacherless=True together: choose one objective")
    train_task = get_task("star_graph", seed=seed, **task)
    eval_task, eval_problems = held_out(task, eval_n)
    eos = train_task.symbol_id("<eos>")
    net, lm = scratch_lm(preset, train_task.token_vocab_size(), eos=eos, seed=seed, model=model, mtp=mtp)
    train_problems = train_task.problems("train", steps * batch_size)
    inputs, labels, _ = encode_problems(train_task, train_problems, target=target, teacherless=teacherless)

    def score_curve() -> dict:
        scored = evaluate(net, eval_task, eval_problems[:200], target=target, teacherless=teacherless)
        return {
            "exact": sum(scored["correct"]) / len(scored["correct"]),
            "first_step": sum(scored["first_step"]) / len(scored["first_step"]),
        }

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
    scores = evaluate(net, eval_task, eval_problems, target=target, teacherless=teacherless)
    if save_model:
        lm.save_pretrained(out_dir / "model")
        node_tokenizer(train_task).save_pretrained(out_dir / "model")
    return {
        **result,
        "teacherless": teacherless,
        "target": target,
        "accuracy": sum(scores["correct"]) / len(scores["correct"]),
        "first_step_accuracy": sum(scores["first_step"]) / len(scores["first_step"]),
        "valid_rate": sum(scores["valid"]) / len(scores["valid"]),
        **scores,
    }
