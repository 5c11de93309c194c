"""The task registry: name -> class, and `get_task(name, **params)`."""

from __future__ import annotations

from trl_mtp.embedded.tasks.arithmetic import Arithmetic
from trl_mtp.embedded.tasks.base import Task
from trl_mtp.embedded.tasks.copy import Copy
from trl_mtp.embedded.tasks.sort import Sort
from trl_mtp.embedded.tasks.star_graph import StarGraph
from trl_mtp.embedded.tasks.stdlib import Stdlib

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Arithmetic, StarGraph, Sort, Copy, Stdlib)}
PROMPT_TASKS = [name for name in TASKS if name != "stdlib"]  # the ones with prompts, answers and rewards


def get_task(name: str, **params) -> Task:
    """The task `name` built with `params` (and `seed`); unknown names or parameters raise ValueError."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](**params)
