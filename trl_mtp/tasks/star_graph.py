"""Path-star graph path finding (Bachmann & Nagarajan 2024, "The pitfalls of next-token prediction").

A centre node has `degree` arms, each a path of `path_length` nodes counting the centre; labels are drawn
from `nodes` values. The prompt lists the directed edges shuffled, then the start (the centre) and the goal
(the end of one arm): `graph:12>5,40>9,5>33,12>40|12>33=`; the answer is the path: `12,5,33`.
Teacher-forced next-token training learns the "Clever Hans" shortcut and fails to pick the right arm, which
is what makes this task a test for multi-token objectives.
"""

from __future__ import annotations

import re

from trl_mtp.tasks.base import Problem, PromptTask

_PROMPT = re.compile(r"^graph:((?:\d+>\d+,)*\d+>\d+)\|(\d+)>(\d+)=$")


class StarGraph(PromptTask):
    name = "star_graph"
    description = "find the path from the centre to the goal in a shuffled path-star graph"
    params = {"degree": 3, "path_length": 4, "nodes": 50}
    min_values = {"degree": 1, "path_length": 2, "nodes": 2}

    def validate(self) -> None:
        needed = 1 + self.degree * (self.path_length - 1)
        if self.nodes < needed:
            raise ValueError(f"task 'star_graph': nodes={self.nodes} is too few for degree={self.degree} and "
                             f"path_length={self.path_length} (needs >= {needed})")

    def generate(self, rng) -> Problem:
        labels = rng.sample(range(self.nodes), 1 + self.degree * (self.path_length - 1))
        start, rest = labels[0], labels[1:]
        arms = [[start] + rest[i * (self.path_length - 1):(i + 1) * (self.path_length - 1)]
                for i in range(self.degree)]
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
