"""`trl-mtp tasks`: list the embedded tasks, their parameters and a sample of each."""

from __future__ import annotations

from trl_mtp.commands.common import ArgumentParser


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="trl-mtp tasks", description="List the embedded tasks with a sample of each.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples shown")
    args = parser.parse_args(argv)

    from trl_mtp.embedded.tasks import PROMPT_TASKS, TASKS, get_task

    for name, cls in TASKS.items():
        task = get_task(name, seed=args.seed)
        params = ", ".join(f"{k}={v!r}" for k, v in cls.params.items())
        print(f"{name}({params})\n  {cls.description}")
        if name in PROMPT_TASKS:
            sample = task.eval(1)[0]
            print(f"  prompt:     {sample['prompt']}\n  completion: {sample['completion']}")
        else:
            text = next(task.texts("eval"))
            print(f"  text:       {text[:70]!r}...")
    return 0
