"""Multi-digit arithmetic: `123+456=` -> `579` (or `*`). Digits are single tokens, so carries are learnable."""

from __future__ import annotations

import re

from trl_mtp.embedded.tasks.base import Problem, PromptTask

_PROMPT = re.compile(r"^(\d+)([+*])(\d+)=$")


class Arithmetic(PromptTask):
    name = "arithmetic"
    description = "add or multiply two numbers of up to `digits` digits; the answer is the exact result"
    params = {"digits": 3, "op": "+"}
    min_values = {"digits": 1}

    def validate(self) -> None:
        if self.op not in ("+", "*"):
            raise ValueError(f"task 'arithmetic': op must be '+' or '*', got {self.op!r}")

    def generate(self, rng) -> Problem:
        a, b = (rng.randrange(10**self.digits) for _ in range(2))
        prompt = f"{a}{self.op}{b}="
        return Problem(prompt, self.solve(prompt), prompt)

    def solve(self, prompt: str) -> str:
        a, op, b = _PROMPT.match(prompt.strip()).groups()
        return str(int(a) + int(b) if op == "+" else int(a) * int(b))
