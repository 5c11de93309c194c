"""Base classes for the embedded tasks.

`Task` holds the parameters (validated against the class's declared defaults) and the seed. `PromptTask` is a
task generated from a seed with an exact-match answer: a subclass writes `generate(rng)` (one problem) and
`solve(prompt)` (the answer, recomputed from the prompt alone, so the reward needs no extra dataset column).

Splits: a problem belongs to eval iff the hash of its canonical key falls in the eval bucket, so train and eval
are disjoint by construction, and each split is the same for the same seed whatever `n` is asked for (a
longer split extends a shorter one).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

EVAL_BUCKETS = 10  # 1 in 10 problems belongs to eval


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    key: str  # canonical identity of the problem (e.g. a graph's sorted edges), decides its split


def split_of(key: str) -> str:
    """'eval' or 'train' for a problem key, from a hash that is the same in every process."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % EVAL_BUCKETS
    return "eval" if bucket == 0 else "train"


def check_count(n, what: str = "n") -> int:
    """`n` as a non-negative int, or a ValueError naming it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {n!r}")
    return n


class Task:
    """A named, parameterised source of examples. Subclasses set `name`, `description`, `params` (defaults)."""

    name: str = ""
    description: str = ""
    params: dict = {}  # name -> default; the default's type is the type accepted
    min_values: dict = {}  # name -> smallest accepted value for int params (default 0)

    def __init__(self, seed: int = 0, **params):
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(
                f"unknown parameter {unknown[0]!r} for task {self.name!r}; valid: {', '.join(self.params) or 'none'}"
            )
        self.seed = check_count(seed, "seed")
        self.config = {**self.params, **params}
        for key, value in self.config.items():
            default = self.params[key]
            if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"task {self.name!r}: {key} must be an integer, got {value!r}")
            if isinstance(default, int) and value < self.min_values.get(key, 0):
                raise ValueError(f"task {self.name!r}: {key} must be >= {self.min_values.get(key, 0)}, got {value!r}")
            setattr(self, key, value)
        self.validate()

    def validate(self) -> None:
        """Check relations between parameters; raise ValueError naming the bad value."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}(seed={self.seed}, {args})"


class PromptTask(Task):
    """A generated task with prompt/completion examples and an exact-match reward."""

    def generate(self, rng: random.Random) -> Problem:
        """One random problem."""
        raise NotImplementedError

    def solve(self, prompt: str) -> str:
        """The exact answer to `prompt` (raises on a prompt this task cannot parse)."""
        raise NotImplementedError

    def problems(self, split: str, n: int) -> list[Problem]:
        """The first `n` distinct problems of `split` ('train' or 'eval'), deterministic in (seed, params)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        check_count(n)
        rng = random.Random(f"{self.name}|{self.seed}|{split}|{sorted(self.config.items())}")
        out, seen, tries = [], set(), 0
        while len(out) < n:
            problem = self.generate(rng)
            tries += 1
            if split_of(problem.key) == split and problem.key not in seen:
                seen.add(problem.key)
                out.append(problem)
            elif tries > 200 * (n + 10):
                raise ValueError(f"task {self!r} has too few distinct problems for {n} {split} examples")
        return out

    def dataset(self, split: str, n: int, conversational: bool = False):
        """`n` examples of `split` as a `datasets.Dataset` with `prompt` and `completion` columns, as TRL's
        trainers take them: plain strings, or with `conversational=True` lists of chat messages."""
        from datasets import Dataset

        rows = [to_row(p.prompt, p.answer, conversational) for p in self.problems(split, n)]
        if not rows:
            return Dataset.from_dict({"prompt": [], "completion": []})
        return Dataset.from_list(rows)

    def train(self, n: int, conversational: bool = False):
        """`n` training examples (see `dataset`)."""
        return self.dataset("train", n, conversational)

    def eval(self, n: int, conversational: bool = False):
        """`n` evaluation examples, disjoint from every training example (see `dataset`)."""
        return self.dataset("eval", n, conversational)

    def reward(self, prompts, completions, **kwargs) -> list[float]:
        """TRL reward function: 1.0 where the completion (stripped) is exactly the answer, else 0.0.

        Takes plain strings or conversational messages; anything malformed scores 0.0, never raises.
        """
        return [self._score(p, c) for p, c in zip(prompts, completions)]

    def _score(self, prompt, completion) -> float:
        try:
            return float(message_text(completion, "assistant").strip() == self.solve(message_text(prompt, "user")))
        except Exception:  # a malformed prompt or completion is simply wrong
            return 0.0


def to_row(prompt: str, completion: str, conversational: bool) -> dict:
    """One TRL prompt/completion example, plain or conversational."""
    if conversational:
        return {
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": completion}],
        }
    return {"prompt": prompt, "completion": completion}


def message_text(value, role: str) -> str:
    """The text of a plain string, or of the last message with `role` in a list of chat messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    contents = [m["content"] for m in value if isinstance(m, dict) and m.get("role") == role]
    if not contents or not isinstance(contents[-1], str):
        raise ValueError(f"no {role} message with text content")
    return contents[-1]
