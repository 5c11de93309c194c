"""The embedded default world: tokenizer, tiny model presets, seeded tasks with exact-match rewards, evaluation.

Modules: `tokenizer` (get_tokenizer), `presets` (PRESETS, build_model), `registry` (TASKS, get_task), one
module per task, `evaluate` (evaluate_task, heldout_nll). Importing this package is cheap (no torch).
"""

from trl_mtp.tasks.registry import PROMPT_TASKS, TASKS, get_task

__all__ = ["PROMPT_TASKS", "TASKS", "get_task"]
