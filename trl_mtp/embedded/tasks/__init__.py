"""The embedded tasks: seeded generators of problems with exact-match rewards, one module per task.

`registry` (TASKS, PROMPT_TASKS, get_task), `base` (the task classes), and one module per task. Importing this
package is cheap (no torch).
"""

from trl_mtp.embedded.tasks.registry import PROMPT_TASKS, TASKS, get_task

__all__ = ["PROMPT_TASKS", "TASKS", "get_task"]
