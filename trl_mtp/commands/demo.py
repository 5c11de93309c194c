"""`trl-mtp demo`: the main job on the embedded default, as a list of stages, ending with one table and a report.

Each stage is a function of a shared context dict: it reads what earlier stages left (`tokenizer`, `base_dir`,
`base_model`, `mtp_run`, ...), appends result rows to `ctx["rows"]`
({"model", "task", "metric", "value", "ci": (low, high) or None, "n"}) and named run folders to `ctx["runs"]`
(the report's pages).

Output: a few lines per stage and the trainers' step bar; what the libraries print during a training run (the
trainer's per-step log dicts, warnings) goes to `train.log` in that run's folder.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

from trl_mtp.commands.common import ArgumentParser, non_negative_int, positive_int

# Two small tasks instead of every task at its default size: a 1.1M-parameter model trained for a few hundred steps
# scores 0 on every default task (and on a four-task mixture), which compares nothing. RL starts where SFT left the
# model half-way (sort), so that PPO has room. As in docs/results.md.
DEMO_TASKS = {"copy": {"length": 3, "max_value": 30}, "sort": {"length": 3, "max_value": 30}}
RL_TASK = "sort"


def stage_tokenizer(ctx: dict) -> None:
    """Build (or load from the cache) the offline tokenizer."""
    from trl_mtp.embedded.tokenizer import get_tokenizer

    ctx["tokenizer"] = get_tokenizer()
    print(f"tokenizer: vocab {len(ctx['tokenizer'])}, {ctx['tokenizer'].name_or_path}")


def stage_pretrain(ctx: dict) -> None:
    """Pretrain a tiny next-token base on the mix (cached), or load the user's `--model`."""
    from transformers import AutoModelForCausalLM

    from trl_mtp.commands.common import load_model_and_tokenizer

    args = ctx["args"]
    if args.model:
        ctx["base_model"], ctx["tokenizer"] = load_model_and_tokenizer(args.model)
        ctx["base_name"] = args.model
        return
    from trl_mtp.embedded.pretrain import pretrain_base

    ctx["base_dir"] = pretrain_base(args.preset, "mix", steps=args.pretrain_steps, seed=args.seed, verbose=True)
    ctx["base_model"] = AutoModelForCausalLM.from_pretrained(ctx["base_dir"])
    ctx["base_name"] = f"{args.preset} base"
    print(f"base model: {ctx['base_dir']}")


def stage_evaluate_base(ctx: dict) -> None:
    """Greedy exact-match accuracy of the base on the demo's tasks, and its held-out stdlib NLL."""
    evaluate_into(ctx, ctx["base_model"], ctx["base_name"])


def evaluate_into(ctx: dict, model, model_name: str) -> None:
    """Evaluate `model` on the demo's tasks (accuracy with a 90% bootstrap CI) and stdlib NLL; append rows to ctx."""
    from trl_mtp.bootstrap import bootstrap_ci
    from trl_mtp.embedded.evaluate import evaluate_task, heldout_nll
    from trl_mtp.embedded.tasks import get_task

    args, tokenizer = ctx["args"], ctx["tokenizer"]
    for name, params in DEMO_TASKS.items():
        result = evaluate_task(model, tokenizer, get_task(name, seed=args.seed, **params), n=args.eval_n, batch_size=50)
        ci = bootstrap_ci(result["correct"])[1:] if result["n"] else None
        ctx["rows"].append(
            {
                "model": model_name,
                "task": name,
                "metric": "accuracy",
                "value": result["accuracy"],
                "ci": ci,
                "n": result["n"],
            }
        )
        prompt, completion, target = result["samples"][0] if result["samples"] else ("", "", "")
        print(f"  {name}: {prompt}{completion!r} (target {target!r})")
    texts = get_task("stdlib", seed=args.seed).eval(args.eval_n // 4 or 1)["text"]
    ctx["rows"].append(
        {
            "model": model_name,
            "task": "stdlib",
            "metric": "nll/token",
            "value": heldout_nll(model, tokenizer, texts),
            "ci": None,
            "n": len(texts),
        }
    )


@contextlib.contextmanager
def logged_to(log_file: Path):
    """What a training run prints to stdout (the trainer's per-step log dicts), its warnings and its log records go
    to `log_file`; the trainer's step bar (tqdm on stderr) stays on the terminal."""
    from transformers.utils import logging as hf_logging

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f, contextlib.redirect_stdout(f), warnings.catch_warnings():
        handler = logging.StreamHandler(f)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: f.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        logging.getLogger().addHandler(handler)
        hf_logging.add_handler(handler)
        hf_logging.disable_default_handler()
        try:
            yield
        finally:
            hf_logging.enable_default_handler()
            hf_logging.remove_handler(handler)
            logging.getLogger().removeHandler(handler)


def stage_sft(ctx: dict) -> None:
    """From the same base: next-token SFT vs MTP-SFT on the mixture of the demo's tasks, scored side by side."""
    from trl_mtp.bootstrap import bootstrap_ci
    from trl_mtp.diagnostics.recorder import DEFAULT_EVERY
    from trl_mtp.embedded.cache import cache_root, stable_hash
    from trl_mtp.experiments.sft_runs import run_sft

    args = ctx["args"]
    if "base_dir" not in ctx or args.sft_steps == 0:
        print("   skipped (needs the embedded base and --sft-steps > 0)")
        return
    tasks = {name: {"seed": args.seed, **params} for name, params in DEMO_TASKS.items()}
    variants = {
        "NTP-SFT": None,
        f"MTP-SFT ({args.mtp_head}, D={args.mtp_heads})": {"head_type": args.mtp_head, "num_mtp_heads": args.mtp_heads},
    }
    for label, mtp in variants.items():
        key = stable_hash(
            {
                "base": str(ctx["base_dir"]),
                "mtp": mtp,
                "seed": args.seed,
                "steps": args.sft_steps,
                "eval_n": args.eval_n,
                "tasks": tasks,
                "version": 5,
            }
        )
        run_dir = cache_root() / "demo-sft" / key
        print(f"   {label}: {args.sft_steps} steps", flush=True)
        # the MTP run records its heads (MTPRecorder) for the diagnostics stage and the report
        with logged_to(run_dir / "train.log"):
            result = run_sft(
                ctx["base_dir"],
                run_dir,
                tasks=tasks,
                mtp=mtp,
                seed=args.seed,
                steps=args.sft_steps,
                n_train=1000,
                eval_n=args.eval_n,
                record_every=None if mtp is None else DEFAULT_EVERY,
                disable_tqdm=False,
            )
        ctx["runs"].append((label if mtp is None else f"MTP-SFT {args.mtp_head} D={args.mtp_heads}", run_dir))
        if mtp is not None:
            ctx["mtp_run"] = run_dir
        print(
            f"   {label}: {result['train_seconds']:.0f}s of training, final loss {result['final_train_loss']:.3f} "
            f"(log: {run_dir / 'train.log'})"
        )
        for name, score in result["tasks"].items():
            ctx["rows"].append(
                {
                    "model": label,
                    "task": name,
                    "metric": "accuracy",
                    "value": score["accuracy"],
                    "ci": bootstrap_ci(score["correct"])[1:],
                    "n": len(score["correct"]),
                }
            )
        # exact match needs every token right; the per-token view shows what the heads learned on the way
        train_rows = {"next-token acc": result["final_token_accuracy"]}
        train_rows.update(
            {
                f"head acc depth {k.rsplit('_', 1)[1]}": v
                for k, v in result["mtp_metrics"].items()
                if k.startswith("mtp/acc_depth_")
            }
        )
        for metric, value in train_rows.items():
            if value is not None:
                ctx["rows"].append(
                    {"model": label, "task": "train mix", "metric": metric, "value": value, "ci": None, "n": "last log"}
                )


def stage_rl(ctx: dict) -> None:
    """PPO with the MTP loss on the rollouts (decoupled heads) on one task, from the MTP-SFT stage's model: training
    reward, held-out accuracy, and the heads' mean accepted length (greedy self-speculative decoding) before vs after.
    The run records what the heads predicted for the sampled tokens (for the report)."""
    from trl_mtp.bootstrap import bootstrap_ci
    from trl_mtp.embedded.cache import cache_root, stable_hash
    from trl_mtp.experiments.rl_runs import run_rl

    args, start = ctx["args"], ctx.get("mtp_run")
    if start is None or args.rl_steps == 0:
        print("   skipped (needs the MTP-SFT stage and --rl-steps > 0)")
        return
    task_params = {"seed": args.seed, **DEMO_TASKS[RL_TASK]}
    key = stable_hash(
        {
            "start": str(start),
            "steps": args.rl_steps,
            "eval_n": args.eval_n,
            "seed": args.seed,
            "task": task_params,
            "version": 4,
        }
    )
    run_dir = cache_root() / "demo-rl" / key
    print(f"   PPO+MTP on {RL_TASK}: {args.rl_steps} iterations", flush=True)
    # rl_drift's settings (docs/results.md section 4): 16 rollouts at lr 3e-4 lowered accuracy, 64 raised it
    with logged_to(run_dir / "train.log"):
        result = run_rl(
            start,
            run_dir,
            algorithm="ppo",
            task_name=RL_TASK,
            task_params=task_params,
            mtp_lambda=0.3,
            seed=args.seed,
            steps=args.rl_steps,
            eval_n=args.eval_n,
            per_device_train_batch_size=64,
            learning_rate=3e-4,
            record_every=max(1, args.rl_steps // 2),
            disable_tqdm=False,
        )
    ctx["runs"].append((f"PPO+MTP on {RL_TASK}", run_dir))
    print(
        f"   PPO+MTP: {result['train_seconds']:.0f}s of training, reward per iteration "
        + " ".join(f"{r:.2f}" for r in result["scores"])
        + f" (log: {run_dir / 'train.log'})"
    )
    label, n = "MTP-SFT -> PPO+MTP", len(result["correct"])
    ctx["rows"] += [
        {
            "model": label,
            "task": RL_TASK,
            "metric": "accuracy",
            "value": result["accuracy"],
            "ci": bootstrap_ci(result["correct"])[1:],
            "n": n,
        },
        {
            "model": label,
            "task": RL_TASK,
            "metric": "accuracy before RL",
            "value": result["accuracy_before"],
            "ci": None,
            "n": n,
        },
        {
            "model": label,
            "task": RL_TASK,
            "metric": "train reward, last third",
            "value": result["reward_last_third"],
            "ci": None,
            "n": "iterations",
        },
        {
            "model": label,
            "task": RL_TASK,
            "metric": "accepted length before RL",
            "value": result["accept_before"],
            "ci": None,
            "n": n,
        },
        {
            "model": label,
            "task": RL_TASK,
            "metric": "accepted length after RL",
            "value": result["accept_after"],
            "ci": None,
            "n": n,
        },
    ]


def stage_diagnostics(ctx: dict) -> None:
    """World-model consistency probe of the recorded MTP-SFT run: does head i match the policy's own i-step future?"""
    from trl_mtp.experiments.recorded_runs import probe_task

    run = ctx.get("mtp_run")
    if run is None:
        print("   skipped (no recorded MTP run)")
        return
    if not (run / "diagnostics" / "consistency.json").is_file():
        with logged_to(run / "diagnostics" / "probe.log"):
            probe_task(run, RL_TASK, seed=ctx["args"].seed, task_params=DEMO_TASKS[RL_TASK])
    print(f"   probed: {run / 'diagnostics' / 'consistency.json'}")


def stage_report(ctx: dict) -> None:
    """Plots and HTML pages of the named runs (`trl-mtp report`): NTP vs MTP side by side, and the RL run's sampled
    tokens against the heads' predictions; prints the page's path."""
    from trl_mtp.diagnostics.report import write_report

    if not ctx["runs"]:
        print("   skipped (no run)")
        return
    names, dirs = zip(*ctx["runs"])
    print(f"report: {write_report(list(dirs), ctx['args'].report_dir, list(names))}")


def stage_table(ctx: dict) -> None:
    """Print every result row as one table."""
    header = ("model", "task", "metric", "value", "90% CI", "n")
    lines = [
        (
            r["model"],
            r["task"],
            r["metric"],
            f"{r['value']:.3f}",
            f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else "",
            str(r["n"]),
        )
        for r in ctx["rows"]
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    for i, line in enumerate([header, *lines]):
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


STAGES = [
    ("tokenizer", stage_tokenizer),
    ("pretrain", stage_pretrain),
    ("evaluate base", stage_evaluate_base),
    ("sft: next-token vs MTP", stage_sft),
    ("diagnostics: consistency probe of the MTP run", stage_diagnostics),
    ("rl: PPO with MTP from the MTP-SFT model", stage_rl),
    ("table", stage_table),
    ("report", stage_report),
]


def main(argv: list[str]) -> int:
    from trl_mtp.config import HEAD_TYPES
    from trl_mtp.embedded.presets import PRESETS

    parser = ArgumentParser(
        prog="trl-mtp demo",
        description="Build the tokenizer and a tiny base model (pretrained, cached); from it, next-token vs MTP SFT "
        f"and PPO with MTP on {', '.join(DEMO_TASKS)}; print one table and write an HTML report.",
    )
    parser.add_argument("--preset", default="tiny-llama", choices=list(PRESETS))
    parser.add_argument("--pretrain-steps", type=non_negative_int, default=600)
    parser.add_argument("--eval-n", type=positive_int, default=100, help="eval examples per task")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--sft-steps", type=non_negative_int, default=600, help="SFT steps per variant (0: skip)")
    parser.add_argument(
        "--rl-steps", type=non_negative_int, default=20, help=f"PPO iterations of the RL stage on {RL_TASK} (0: skip)"
    )
    parser.add_argument("--mtp-head", default="sequential", choices=HEAD_TYPES)
    parser.add_argument("--mtp-heads", type=positive_int, default=2, help="D, extra tokens predicted")
    parser.add_argument("--report-dir", default="mtp-report", help="where the demo writes its report")
    parser.add_argument("--model", default=None, help="evaluate this model (path or hub id) instead of a tiny base")
    args = parser.parse_args(argv)

    from datasets import disable_progress_bars
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # "Loading weights", "Writing model shards": one bar per load, noise here
    disable_progress_bars()  # datasets' map bars of every trainer's preprocessing
    ctx = {"args": args, "rows": [], "runs": []}
    for i, (name, stage) in enumerate(STAGES, 1):
        start = time.time()
        print(f"[{i}/{len(STAGES)}] {name}", flush=True)
        stage(ctx)
        print(f"   ({time.time() - start:.1f}s)", flush=True)
    return 0
