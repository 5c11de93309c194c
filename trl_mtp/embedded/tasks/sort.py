"""Sorting: `sort:31,7,58=` -> `7,31,58`."""

from __future__ import annotations

from trl_mtp.embedded.tasks.base import Problem, PromptTask


def parse_list(prompt: str, prefix: str) -> list[int]:
    """The numbers of a `prefix:1,2,3=` prompt."""
    body = prompt.strip()
    if not (body.startswith(prefix + ":") and body.endswith("=")):
        raise ValueError(f"not a {prefix} prompt: {prompt!r}")
    return [int(x) for x in body[len(prefix) + 1 : -1].split(",")]


class Sort(PromptTask):
    name = "sort"
    description = "sort `length` numbers below `max_value` ascending"
    params = {"length": 6, "max_value": 100}
    min_values = {"length": 1, "max_value": 1}

    def generate(self, rng) -> Problem:
        values = [rng.randrange(self.max_value) for _ in range(self.length)]
        prompt = f"{self.name}:{','.join(map(str, values))}="
        return Problem(prompt, self.solve(prompt), prompt)

    def solve(self, prompt: str) -> str:
        return ",".join(map(str, sorted(parse_list(prompt, self.name))))
