"""`trl-mtp ppo`: PPO (TRL's former algorithm) with MTP heads, TRL-style arguments.

    trl-mtp ppo                                    # embedded world: cached tiny base, the `copy` task and its reward
    trl-mtp ppo --dataset_name arithmetic --max_steps 50 --mode coupled --mtp_lambda 0.1
    trl-mtp ppo --model ./sft-out --reward_model_path ./rm --dataset_name my/prompts --output_dir out
    trl-mtp ppo --config run.yaml                  # any field below, as YAML (TRL's parser); the command line wins

Model: `--model` / `--model_name_or_path` (a path or hub id, or an MTP checkpoint whose trained heads are kept);
without one, the embedded default: a tiny base from `trl-mtp pretrain` (cached), built with `--preset`.
Reward: the embedded task's exact-match reward, or `--reward_model_path` (a sequence-classification model).
Dataset: `--dataset_name` is an embedded task (arithmetic, star_graph, sort, copy; `--task_params` as JSON) or
anything `datasets.load_dataset` takes with a `prompt` column. After training on an embedded task, the eval split is
scored with greedy decoding.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

EMBEDDED_DEFAULTS = dict(learning_rate=3e-4, per_device_train_batch_size=16, response_length=16, max_steps=30,
                         num_ppo_epochs=2, temperature=1.0, kl_coef=0.02, missing_eos_penalty=1.0, logging_steps=5,
                         save_strategy="no", report_to="none", dataloader_pin_memory=False)


def _parser():
    from trl import ModelConfig, ScriptArguments, TrlParser

    from trl_mtp.trainers.ppo_config import PPOConfig

    @dataclass
    class PPOScriptArguments(ScriptArguments):
        dataset_name: str | None = field(default="copy", metadata={
            "help": "An embedded task (arithmetic, star_graph, sort, copy) or a `datasets.load_dataset` name."})
        task_params: str | None = field(default='{"length": 3}', metadata={
            "help": 'Parameters of the embedded task as JSON, e.g. \'{"length": 3}\'.'})
        task_seed: int = field(default=0, metadata={"help": "Seed of the embedded task's generator."})
        num_train_examples: int = field(default=1000, metadata={"help": "Training prompts of an embedded task."})
        num_eval_examples: int = field(default=100, metadata={"help": "Eval examples of an embedded task (0: none)."})
        conversational: bool = field(default=False, metadata={"help": "Embedded task in conversational format."})
        reward_model_path: str | None = field(default=None, metadata={
            "help": "A sequence-classification reward model (instead of the embedded task's reward)."})
        value_model_path: str | None = field(default=None, metadata={
            "help": "A separate value model (sequence classification); default: a value head on the policy."})
        preset: str = field(default="tiny-llama", metadata={
            "help": "Without --model: the preset of the embedded base (pretrained and cached by `trl-mtp pretrain`)."})
        pretrain_steps: int = field(default=300, metadata={"help": "Without --model: pretraining steps of the base."})

    class Parser(TrlParser):
        def error(self, message):  # one line from the dispatcher, not argparse's usage dump
            raise ValueError(message)

    return Parser((PPOScriptArguments, PPOConfig, ModelConfig), prog="trl-mtp ppo")


def main(argv: list[str]) -> int:
    from trl_mtp.tasks.registry import PROMPT_TASKS

    argv = ["--model_name_or_path" if a == "--model" else a for a in argv]
    parser = _parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    if "--model_name_or_path" not in argv and "--config" not in argv:  # CPU-friendly defaults; explicit ones win
        argv = [x for k, v in EMBEDDED_DEFAULTS.items() if f"--{k}" not in argv for x in (f"--{k}", str(v))] + argv
    script_args, training_args, model_args = parser.parse_args_and_config(argv)

    import torch.distributed as dist
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from trl_mtp.trainers.mtp_mixin import load_mtp_model
    from trl_mtp.trainers.ppo_trainer import PPOTrainer

    if model_args.model_name_or_path is None:
        from trl_mtp.pretrain import pretrain_base

        model_path = str(pretrain_base(script_args.preset, "mix", steps=script_args.pretrain_steps, verbose=True))
    else:
        model_path = model_args.model_name_or_path
    training_args.model_init_kwargs = {k: v for k, v in dict(
        revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype, trust_remote_code=getattr(model_args, "trust_remote_code", None)).items() if v is not None}
    mtp_model = load_mtp_model(model_path, training_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    task, reward_funcs = None, None
    if script_args.dataset_name in PROMPT_TASKS:
        from trl_mtp.tasks.registry import get_task

        params = json.loads(script_args.task_params) if script_args.task_params else {}
        if not isinstance(params, dict):
            raise ValueError(f"task_params={script_args.task_params!r}: expected a JSON object")
        task = get_task(script_args.dataset_name, seed=script_args.task_seed, **params)
        train_dataset = task.train(script_args.num_train_examples, conversational=script_args.conversational)
        if script_args.reward_model_path is None:
            reward_funcs = [task.reward]
    else:
        from datasets import load_dataset

        train_dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)[
            script_args.dataset_train_split]
    if reward_funcs is None and script_args.reward_model_path is None:
        raise ValueError(f"dataset {script_args.dataset_name!r} is not an embedded task: give --reward_model_path")

    trainer = PPOTrainer(
        mtp_model, training_args, train_dataset=train_dataset, processing_class=tokenizer,
        reward_funcs=reward_funcs, reward_model=script_args.reward_model_path,
        value_model=script_args.value_model_path, peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"saved to {training_args.output_dir}")

    if task is not None and script_args.num_eval_examples and trainer.accelerator.is_main_process:
        from trl_mtp.tasks.evaluate import evaluate_task

        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        policy = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
        result = evaluate_task(policy, tokenizer, task, n=script_args.num_eval_examples,
                               conversational=script_args.conversational)
        print(f"{task.name} eval exact-match: {result['accuracy']:.3f} (n={result['n']})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
