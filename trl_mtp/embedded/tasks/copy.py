"""Copying: `copy:31,7,58=` -> `31,7,58`. The easiest task: a sanity check that a model learns the format."""

from __future__ import annotations

from trl_mtp.embedded.tasks.sort import Sort, parse_list


class Copy(Sort):  # same inputs as sort, identity answer
    name = "copy"
    description = "repeat `length` numbers below `max_value` in order"

    def solve(self, prompt: str) -> str:
        return ",".join(map(str, parse_list(prompt, self.name)))
