"""Path-star graph path finding (Bachmann & Nagarajan 2024, "The pitfalls of next-token prediction").

A centre node has `degree` arms, each a path of `path_length` nodes counting the centre; labels are drawn
from `nodes` values. The prompt lists the directed edges shuffled, then the start (the centre) and the goal
(the end of one arm): `graph:12>5,40>9,5>33,12>40|12>33=`; the answer is the path: `12,5,33`.
Teacher-forced next-token training learns the "Clever Hans" shortcut and fails to pick the right arm, which
is what makes this task a test for multi-token objectives.

`encode_prompt` / `encode_path` give the paper's tokenisation, one token per node (ids 0..nodes-1 are the node
labels, then the prompt's symbols, an end token and the teacherless dummy `$`), for models trained from scratch on
this task alone with a vocabulary of `token_vocab_size()`.
"""

from __future__ import annotations

import re

from trl_mtp.embedded.tasks.base import Problem, PromptTask

_PROMPT = re.compile(r"^graph:((?:\d+>\d+,)*\d+>\d+)\|(\d+)>(\d+)=$")
SYMBOLS = (">", ",", "|", "=", "<eos>", "$")  # token ids nodes + 0 .. nodes + 5 in the one-token-per-node encoding


class StarGraph(PromptTask):
    name = "star_graph"
    description = "find the path from the centre to the goal in a shuffled path-star graph"
    params = {"degree": 3, "path_length": 4, "nodes": 50}
    min_values = {"degree": 1, "path_length": 2, "nodes": 2}

    def validate(self) -> None:
        needed = 1 + self.degree * (self.path_length - 1)
        if self.nodes < needed:
            raise ValueError(
                f"task 'star_graph': nodes={self.nodes} is too few for degree={self.degree} and "
                f"path_length={self.path_length} (needs >= {needed})"
            )

    def generate(self, rng) -> Problem:
        labels = rng.sample(range(self.nodes), 1 + self.degree * (self.path_length - 1))
        start, rest = labels[0], labels[1:]
        arms = [
            [start] + rest[i * (self.path_length - 1) : (i + 1) * (self.path_length - 1)] for i in range(self.degree)
        ]
        edges = [(a, b) for arm in arms for a, b in zip(arm, arm[1:])]
        goal = rng.choice(arms)[-1]
        key = f"{sorted(edges)}|{start}>{goal}"
        rng.shuffle(edges)
        prompt = f"graph:{','.join(f'{a}>{b}' for a, b in edges)}|{start}>{goal}="
        return Problem(prompt, self.solve(prompt), key)

    def solve(self, prompt: str) -> str:
        edges, start, goal = _PROMPT.match(prompt.strip()).groups()
        parent = {}
        for edge in edges.split(","):
            a, b = edge.split(">")
            parent[b] = a
        path = [goal]  # walk back from the goal: in a star each node has one parent
        while path[-1] != start:
            path.append(parent[path[-1]])
            if len(path) > len(parent) + 1:
                raise ValueError("goal not reachable from start")
        return ",".join(reversed(path))

    # -- one token per node -------------------------------------------------------------------------------
    def token_vocab_size(self) -> int:
        """Vocabulary of the one-token-per-node encoding: the node labels, then `SYMBOLS`."""
        return self.nodes + len(SYMBOLS)

    def symbol_id(self, symbol: str) -> int:
        """The token id of one of `SYMBOLS` (e.g. "$", the teacherless dummy)."""
        if symbol not in SYMBOLS:
            raise ValueError(f"unknown star-graph symbol {symbol!r}; choose from {', '.join(SYMBOLS)}")
        return self.nodes + SYMBOLS.index(symbol)

    def encode_prompt(self, prompt: str) -> list[int]:
        """`graph:12>5,5>33|12>33=` as [12, >, 5, ',', 5, >, 33, |, 12, >, 33, =]: one token per node and symbol."""
        if not _PROMPT.match(prompt.strip()):
            raise ValueError(f"not a star-graph prompt: {prompt!r}")
        return [
            int(t) if t.isdigit() else self.symbol_id(t)
            for t in re.findall(r"\d+|[>,|=]", prompt.strip().removeprefix("graph:"))
        ]

    def encode_path(self, answer: str) -> list[int]:
        """The answer `12,5,33` as its node tokens [12, 5, 33] (no separators: one token per step)."""
        return [int(node) for node in answer.split(",")]
