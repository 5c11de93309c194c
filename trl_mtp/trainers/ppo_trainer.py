"""`MTPPPOTrainer` (alias `PPOTrainer`): TRL's former PPO (RLHF with a critic) on current TRL/transformers, with MTP
heads.

    trainer = MTPPPOTrainer(model="path/or/hub-id", args=MTPPPOConfig(output_dir="ppo", response_length=16),
                         train_dataset=dataset_with_prompt_column, processing_class=tokenizer,
                         reward_funcs=[task.reward])            # or reward_model="path/to/reward-model"
    trainer.train()

One PPO iteration (= one `global_step`), as "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024):

    1. rollout      sample a response per prompt (temperature T), truncate it after the stop token
    2. score        reward functions / reward model on the truncated response, minus the missing-EOS penalty
    3. evaluate     log pi_old, log pi_ref (logits / T) and V_old on every response token, in no-grad passes
    4. rewards      r_t = -kl_coef * KL_t, plus the score on the last real token
    5. advantages   GAE(gamma, lam); whiten A over the batch
    6. update       num_ppo_epochs x num_mini_batches optimizer steps of
                    L = L_clip(policy) + vf_coef * L_clip(value) + lambda_mtp * L_mtp

Extension points: `generate_rollouts` (one method that samples responses: speculative decoding plugs in there),
`compute_advantages` (return normalisation), `value_loss` (the critic's loss), `auxiliary_losses` (named loss terms
added to PPO's), `after_optimizer_step`, `_auxiliary_modules` (clipped apart from the policy). The world model
(`WorldModelPPOTrainer`, a subclass) plugs in through them. The maths is in `ppo_core.py`, one function per equation.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.fsdp import register_fsdp_forward_method
from transformers import GenerationConfig, TemperatureLogitsWarper, Trainer, TrainerState
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint

from trl_mtp.losses import IGNORE_INDEX
from trl_mtp.trainers import ppo_core as core
from trl_mtp.trainers.mtp_mixin import HEADS_MODULE, ModelSource, MTPTrainerMixin, split_heads
from trl_mtp.trainers.mtp_targets import filter_mtp_labels
from trl_mtp.trainers.ppo_config import MTPPPOConfig
from trl_mtp.trainers.ppo_models import PolicyAndValue, disable_dropout, load_sequence_classifier, per_token_scores
from trl_mtp.trainers.speculative_rollouts import SpeculativeRollouts

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_DIR = "value_model"


@dataclass
class Rollouts:
    """One batch of rollouts, [B, ...] tensors. Columns: `query_responses` = [left-padded prompt | response];
    response position j is column `context_length + j`, predicted by the logits at column `context_length - 1 + j`."""

    query_responses: torch.Tensor  # [B, C + R] token ids
    attention_mask: torch.Tensor  # [B, C + R] 1 on prompt and real response tokens
    responses: torch.Tensor  # [B, R] truncated after the stop token (then pad)
    mask: torch.Tensor  # [B, R] bool, real response tokens
    logprobs: torch.Tensor  # [B, R] log pi_old(r_j), 0 on padding
    ref_logprobs: torch.Tensor  # [B, R] log pi_ref(r_j)
    values: torch.Tensor  # [B, R] V_old(s_j)
    scores: torch.Tensor  # [B] score after the missing-EOS penalty
    rewards: torch.Tensor | None = None  # [B, R] per-token rewards
    non_score_rewards: torch.Tensor | None = None  # [B, R] -kl_coef * KL_t
    kl: torch.Tensor | None = None  # [B, R]
    advantages: torch.Tensor | None = None  # [B, R] whitened
    returns: torch.Tensor | None = None  # [B, R]

    @property
    def context_length(self) -> int:
        return self.query_responses.size(1) - self.responses.size(1)

    def __getitem__(self, index) -> Rollouts:
        return Rollouts(
            **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index] for f in fields(self)}
        )

    def __len__(self) -> int:
        return self.responses.size(0)


def is_conversational(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


@contextlib.contextmanager
def sampling_only_from(model, generation_config: GenerationConfig):
    """Inside, `model` samples from `generation_config` alone. `generate` fills every field that a passed config
    leaves unset from the model's own `generation_config` (a repetition penalty, min_new_tokens, suppressed tokens,
    min_p ...), which would sample another distribution than the one PPO scores: the model's config is swapped out
    meanwhile, and the logits processors `generate` would build are checked to be a temperature at most."""
    saved = model.generation_config
    model.generation_config = generation_config
    try:
        prepared, _ = model._prepare_generation_config(generation_config)
        extra = [
            type(p).__name__
            for p in model._get_logits_processor(prepared, device=model.device)
            if not isinstance(p, TemperatureLogitsWarper)
        ]
        if extra:
            raise ValueError(
                f"rollout sampler: {', '.join(extra)} on top of softmax(logits / temperature); PPO's "
                "log-probs would not be those of the sampled tokens"
            )
        yield
    finally:
        model.generation_config = saved


class MTPPPOTrainer(SpeculativeRollouts, MTPTrainerMixin, Trainer):
    """PPO with a critic, TRL's former algorithm and metric names, plus MTP heads trained on the rollouts.

    Args:
        model: the policy: a path or hub id, a `PreTrainedModel` (heads built from `args`), or an `MTPForCausalLM`.
        args: an `MTPPPOConfig`.
        train_dataset: a `datasets.Dataset` with a `prompt` column (text, or chat messages); other columns are passed
            to the reward functions by name.
        processing_class: the tokenizer (needs a pad token; an EOS token with `stop_token="eos"`).
        reward_funcs: callables in TRL's reward-function signature
            `f(prompts, completions, completion_ids, **columns) -> list[float]` (one or several, summed with
            `args.reward_weights`), or a single one. Exclusive with `reward_model`.
        reward_model: a sequence-classification model (or its path) sharing the tokenizer; its score is read at the
            last real token of prompt + truncated response.
        value_model: a sequence-classification model (or its path) used as a separate critic; `None`: a value head
            on the policy's own last hidden state.
        ref_model: the KL reference (or its path); `None`: a frozen copy of the initial policy, or with
            `peft_config` the policy with its adapters disabled.
        peft_config: LoRA on the trunk (heads and value head trained in full).
        callbacks, optimizers: as in `transformers.Trainer`.
    """

    config_class, default_output_dir = MTPPPOConfig, "ppo"

    def __init__(
        self,
        model: ModelSource,
        args: MTPPPOConfig | None = None,
        train_dataset=None,
        processing_class=None,
        reward_funcs: Callable | list[Callable] | None = None,
        reward_model=None,
        value_model=None,
        ref_model=None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        args = self._checked_args(args)
        name = type(self).__name__
        if processing_class is None or processing_class.pad_token_id is None:
            raise ValueError(f"processing_class: {name} needs a tokenizer with a pad token")
        if train_dataset is None or "prompt" not in train_dataset.column_names:
            raise ValueError(f"train_dataset: {name} needs a dataset with a 'prompt' column")
        if callable(reward_funcs):
            reward_funcs = [reward_funcs]
        if bool(reward_funcs) == (reward_model is not None):
            raise ValueError("give exactly one of reward_funcs (a list of functions) or reward_model")
        if reward_funcs and args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
            raise ValueError(
                f"reward_weights has {len(args.reward_weights)} entries for {len(reward_funcs)} reward functions"
            )
        self.reward_funcs = list(reward_funcs or [])
        self.stop_token_id = (
            args.stop_token_id
            if args.stop_token_id is not None
            else (processing_class.eos_token_id if args.stop_token == "eos" else None)
        )
        if args.stop_token == "eos" and self.stop_token_id is None:
            raise ValueError("stop_token='eos' but the tokenizer has no EOS token")

        # policy = the causal LM with the MTP heads attached (one module tree); the reference is copied first
        base = self._prepare_mtp_model(model, args, peft_config)
        init_kwargs = args.model_init_kwargs if isinstance(args.model_init_kwargs, dict) else {}
        if ref_model is None and peft_config is None:
            # without our capture hooks, and from the full parameters under ZeRO-3 (the base holds empty partitions
            # there): a plain full copy on every rank, which the engine never partitions
            ref_model = self.mtp_model.trunk.copy_module(base)
            if hasattr(ref_model, HEADS_MODULE):
                delattr(ref_model, HEADS_MODULE)
        elif isinstance(ref_model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM

            ref_model = AutoModelForCausalLM.from_pretrained(ref_model, **init_kwargs)
        if peft_config is not None:
            from peft import get_peft_model

            base = get_peft_model(base, peft_config)
        if value_model is not None:
            value_model = load_sequence_classifier(value_model, init_kwargs, processing_class.pad_token_id)
        self.ref_model = ref_model  # None: the policy with adapters disabled
        self.reward_model = (
            None
            if reward_model is None
            else load_sequence_classifier(reward_model, init_kwargs, processing_class.pad_token_id)
        )

        policy_and_value = self._build_policy_and_value(base, value_model, args)
        if args.disable_dropout:  # pi_old comes from eval mode, the update from train mode: dropout would be clipped
            for module in (policy_and_value, self.ref_model, self.reward_model):
                if module is not None:
                    disable_dropout(module)
        super().__init__(
            model=policy_and_value,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._after_parent_init()
        self._refuse_unsupported_speculation()
        for frozen in (self.ref_model, self.reward_model):
            if frozen is not None:
                frozen.to(self.accelerator.device).eval().requires_grad_(False)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._permutations: dict[int, list[int]] = {}

        # batch sizes (TRL's former names): per process, per iteration
        self.local_batch_size = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
        )
        self.local_mini_batch_size = self.local_batch_size // args.num_mini_batches
        self.batch_size = (
            self.local_batch_size * self.accelerator.num_processes
        )  # rollouts per iteration, all processes

    def _build_policy_and_value(self, base, value_model, args: MTPPPOConfig) -> PolicyAndValue:
        """The trained module tree: everything the optimizer, DDP and checkpoints see as one."""
        return PolicyAndValue(base, self.mtp_model.trunk, value_model)

    # == the training loop ==========================================================================================
    def num_iterations(self) -> int:
        """PPO iterations: `max_steps`, else ceil(total_episodes / batch_size)."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        episodes = self.args.total_episodes or int(self.args.num_train_epochs * len(self.train_dataset))
        return math.ceil(episodes / self.batch_size)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Run PPO for `num_iterations()` iterations, or the rest of them from a checkpoint (`True`: the last one in
        `output_dir`). Returns the `TrainerState`."""
        args = self.args
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in output_dir={args.output_dir!r}")
        total = self.num_iterations()
        if resume_from_checkpoint is not None:
            self._load_from_checkpoint(resume_from_checkpoint)
        if args.activation_checkpointing:  # as Trainer.train, which this loop replaces, would
            kwargs = dict(args.activation_checkpointing_kwargs or {})
            every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
            self.mtp_model.base_model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs or None, every_n_layers=every_n_layers, offload=offload
            )
        self.create_optimizer_and_scheduler(num_training_steps=total)
        self.model_wrapped, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            self.model, self.optimizer, self.lr_scheduler
        )
        self.callback_handler.optimizer, self.callback_handler.lr_scheduler = self.optimizer, self.lr_scheduler
        if self.is_deepspeed_enabled:  # as Trainer.train sets it: `save_model` reads the engine from here
            self.deepspeed = self.model_wrapped
        # sampling calls `generate`, not the root's forward: under FSDP2 only a registered forward method gathers the
        # parameters the sharded root holds (and runs its lazy init first); a no-op on any other engine
        register_fsdp_forward_method(self.accelerator.unwrap_model(self.model_wrapped), "generate")

        self.state = TrainerState(
            stateful_callbacks=[
                cb for cb in self.callback_handler.callbacks + [self.control] if isinstance(cb, ExportableState)
            ]
        )
        self.state.compute_steps(args, total)
        if resume_from_checkpoint is not None:
            self.state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            self._load_optimizer_and_scheduler(resume_from_checkpoint)
            self._load_rng_state(resume_from_checkpoint)
        else:  # a different sampling stream per process (the prompts differ too)
            torch.manual_seed(args.seed + 100_003 * self.accelerator.process_index)
        self.state.init_training_references(self, total, 1, None)
        self.state.max_steps = total
        self.is_in_train = True
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)

        start_time = time.time()
        while self.state.global_step < total:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            rollouts = self.make_rollouts(self.state.global_step)
            self.update(rollouts)
            self.lr_scheduler.step()
            self.state.global_step += 1
            self.state.epoch = self.state.global_step * self.batch_size / len(self.train_dataset)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log:
                self.log({}, start_time)
            if self.control.should_save:
                self._save_checkpoint(self.model_wrapped, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self.is_in_train = False
        return self.state

    # == 1-5: rollouts ===============================================================================================
    def prompt_batch(self, step: int) -> dict[str, list]:
        """This process's share of the prompts of iteration `step`: positions [step * B, (step + 1) * B) of an endless
        stream of shuffled epochs (a fresh permutation per epoch, seeded). A pure function of the step, so a resumed
        run sees the same prompts as an uninterrupted one."""
        n = len(self.train_dataset)
        first = step * self.batch_size + self.accelerator.process_index * self.local_batch_size
        indices = []
        for position in range(first, first + self.local_batch_size):
            epoch = position // n
            if epoch not in self._permutations:  # keep the current epoch's only: positions only grow
                generator = torch.Generator().manual_seed(self.args.seed + epoch)
                self._permutations = {epoch: torch.randperm(n, generator=generator).tolist()}
            indices.append(self._permutations[epoch][position % n])
        return {name: list(column) for name, column in self.train_dataset[indices].items()}

    def tokenize_prompts(self, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and attention mask (chat messages go through the chat template)."""
        texts = [
            self.processing_class.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            if is_conversational(p)
            else p
            for p in prompts
        ]
        enc = self.processing_class(
            texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
        )
        return enc["input_ids"].to(self.accelerator.device), enc["attention_mask"].to(self.accelerator.device)

    def rollout_generation_config(self) -> GenerationConfig:
        """The sampler whose log-probs PPO computes, log_softmax(logits / temperature), and nothing else: no top-k,
        no top-p, and (generated under `sampling_only_from`) none of the model's own generation settings."""
        return GenerationConfig(
            max_new_tokens=self.args.response_length,
            do_sample=True,
            temperature=self.args.temperature,
            top_k=0,
            top_p=1.0,
            pad_token_id=self.processing_class.pad_token_id,
            eos_token_id=self.stop_token_id if self.stop_token_id is not None else [],  # []: never stop early
        )

    @torch.no_grad()
    def generate_rollouts(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """[B, <= response_length] sampled response tokens for left-padded `queries`; anything after a row's stop token
        is ignored. The one place that samples; with `speculative_rollouts`, the heads draft
        (`SpeculativeRollouts.speculative_rollout`, given this path's `generation_config` under the same swap, so it
        samples what this path does and stops where it does)."""
        generation_config = self.rollout_generation_config()
        unwrapped = self.accelerator.unwrap_model(self.model_wrapped)  # `generate` on the root: see `train`
        responses = []
        with sampling_only_from(self.mtp_model.base_model, generation_config):
            for i in range(0, queries.size(0), self.args.local_rollout_forward_batch_size):
                q = queries[i : i + self.args.local_rollout_forward_batch_size]
                m = query_mask[i : i + self.args.local_rollout_forward_batch_size]
                if self.args.speculative_rollouts:
                    out = self.speculative_rollout(q, m, generation_config)
                else:
                    out = unwrapped.generate(input_ids=q, attention_mask=m, generation_config=generation_config)
                responses.append(out[:, q.size(1) :])
        width = max(r.size(1) for r in responses)  # chunks that all stopped early are shorter
        pad = self.processing_class.pad_token_id
        return torch.cat([torch.nn.functional.pad(r, (0, width - r.size(1)), value=pad) for r in responses])

    @torch.no_grad()
    def make_rollouts(self, step: int) -> Rollouts:
        """Steps 1-5 of an iteration: sample, score, evaluate, reward, advantages."""
        args = self.args
        batch = self.prompt_batch(step)
        queries, query_mask = self.tokenize_prompts(batch["prompt"])
        policy_and_value = self.accelerator.unwrap_model(self.model_wrapped)  # no-grad passes need no DDP
        policy_and_value.eval()
        with self.precision_context():  # sampler, pi_old, pi_ref, V_old and the reward model: the update's precision
            # 1. rollout, truncated after the first stop token (N+ details #23)
            raw = self.generate_rollouts(queries, query_mask)
            responses = core.truncate_at_stop(raw, self.stop_token_id, self.processing_class.pad_token_id)
            mask = core.response_mask(raw, self.stop_token_id)
            query_responses = torch.cat([queries, responses], dim=1)
            attention_mask = torch.cat([query_mask, mask.long()], dim=1)
            # 2. score the truncated response; penalise responses that never stopped (checked against the stop token)
            scores = self.score_rollouts(batch, query_responses, attention_mask, responses, mask)
            stop_id = self.stop_token_id if self.stop_token_id is not None else self.processing_class.eos_token_id
            contains_stop = ((responses == stop_id) & mask).any(dim=1)
            scores = core.apply_missing_eos_penalty(scores, contains_stop, args.missing_eos_penalty)
            # 3. log pi_old, log pi_ref and V_old, chunk by chunk
            logprobs, ref_logprobs, values = [], [], []
            C = queries.size(1)
            for i in range(0, len(responses), args.local_rollout_forward_batch_size):
                rows = slice(i, i + args.local_rollout_forward_batch_size)
                logits, value = policy_and_value(query_responses[rows], attention_mask[rows])
                ref_logits = self.reference_logits(query_responses[rows], attention_mask[rows])
                logprobs.append(core.logprobs_of(self.response_logits(logits, C), responses[rows]))
                ref_logprobs.append(core.logprobs_of(self.response_logits(ref_logits, C), responses[rows]))
                values.append(value[:, C - 1 : -1])
        policy_and_value.train()
        rollouts = Rollouts(
            query_responses=query_responses,
            attention_mask=attention_mask,
            responses=responses,
            mask=mask,
            logprobs=torch.cat(logprobs).masked_fill(~mask, 0.0),
            ref_logprobs=torch.cat(ref_logprobs).masked_fill(~mask, 0.0),
            values=torch.cat(values).masked_fill(~mask, 0.0),
            scores=scores,
        )
        # 4. per-token rewards: KL penalty everywhere, score at the end (N+ details #11)
        rollouts.kl = core.kl_estimate(rollouts.logprobs, rollouts.ref_logprobs, args.kl_estimator).masked_fill(
            ~mask, 0.0
        )
        rollouts.rewards, rollouts.non_score_rewards = core.per_token_rewards(scores, rollouts.kl, mask, args.kl_coef)
        if args.whiten_rewards:
            rollouts.rewards = core.masked_whiten(rollouts.rewards, mask, shift_mean=False)
        # 5. advantages and returns
        rollouts.advantages, rollouts.returns = self.compute_advantages(rollouts)
        self._log_rollout_metrics(rollouts, contains_stop)
        return rollouts

    def response_logits(self, logits: torch.Tensor, context_length: int) -> torch.Tensor:
        """[B, R, V] logits / temperature of the response tokens (column C-1+j predicts response token j), divided in
        float32 as the sampler divides them: a bf16 division would round pi_ref and pi_old apart."""
        return logits[:, context_length - 1 : -1].float() / self.args.temperature

    def precision_context(self):
        """The mixed precision of the update's forward (accelerate's autocast of the prepared model; nothing without
        mixed precision), for every pass outside it that yields a log-prob or a score: sampler, pi_old and pi_ref
        agree exactly only if they run the same arithmetic."""
        return self.accelerator.autocast()

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the KL reference: the frozen copy, or the policy with its LoRA adapters disabled."""
        position_ids = core.position_ids_from_mask(attention_mask)
        if self.ref_model is not None:
            return self.ref_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
        policy = self.accelerator.unwrap_model(self.model_wrapped).policy
        with policy.disable_adapter():
            return policy(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits

    def score_rollouts(self, batch: dict, query_responses, attention_mask, responses, mask) -> torch.Tensor:
        """[B] score of each (prompt, truncated response): the weighted sum of the reward functions, or the reward
        model's score at the last real token (found from the mask: any padding side)."""
        device = responses.device
        if self.reward_model is not None:
            token_scores = per_token_scores(self.reward_model, query_responses, attention_mask)
            rows = torch.arange(len(responses), device=device)
            return token_scores[rows, core.last_token_index(attention_mask)]
        prompts = batch["prompt"]
        completion_ids = [row[m].tolist() for row, m in zip(responses, mask)]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        completions = [
            [{"role": "assistant", "content": t}] if is_conversational(p) else t for p, t in zip(prompts, texts)
        ]
        columns = {k: v for k, v in batch.items() if k not in ("prompt", "completion")}
        per_func = torch.zeros(len(prompts), len(self.reward_funcs), device=device)
        for j, func in enumerate(self.reward_funcs):
            values = func(
                prompts=prompts,
                completions=completions,
                completion_ids=completion_ids,
                trainer_state=self.state,
                **columns,
            )
            per_func[:, j] = torch.tensor([math.nan if v is None else float(v) for v in values], device=device)
            name = getattr(func, "__name__", f"reward_{j}")
            self._metrics["train"][f"rewards/{name}/mean"].append(self._mean_all(per_func[:, j].nan_to_num(0.0)))
        weights = torch.tensor(self.args.reward_weights or [1.0] * len(self.reward_funcs), device=device)
        return (per_func.nan_to_num(0.0) * weights).sum(dim=1)  # None (not applicable) counts as 0

    def compute_advantages(self, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages and returns (A + V, the critic's target); advantages whitened over the batch (N+ details
        #21)."""
        advantages, returns = self.gae(rollouts)
        return core.masked_whiten(advantages, rollouts.mask), returns

    def gae(self, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw GAE advantages and returns, before any normalisation."""
        return core.gae_advantages(rollouts.rewards, rollouts.values, rollouts.mask, self.args.gamma, self.args.lam)

    # == 6: the update ===============================================================================================
    def update(self, rollouts: Rollouts) -> None:
        """num_ppo_epochs passes; each a fresh shuffle split into num_mini_batches optimizer steps, each step
        accumulating gradient_accumulation_steps micro-batches."""
        args, model = self.args, self.model_wrapped
        model.train()
        stats = defaultdict(list)
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(self.local_batch_size, device=rollouts.responses.device)
            for start in range(0, self.local_batch_size, self.local_mini_batch_size):
                mini_batch = order[start : start + self.local_mini_batch_size]
                micro_batches = mini_batch.split(args.per_device_train_batch_size)
                for k, micro in enumerate(micro_batches):
                    last = k == len(micro_batches) - 1
                    sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
                    with sync:
                        with self.compute_loss_context_manager():
                            terms, micro_stats = self.compute_losses(model, rollouts[micro])
                        self.accelerator.backward(sum(terms.values()) / len(micro_batches))
                    micro_stats["loss/total"] = sum(terms.values()).detach()
                    for name, value in {**micro_stats, **{f"loss/{n}": t.detach() for n, t in terms.items()}}.items():
                        stats[name].append(value)
                if args.max_grad_norm is not None and args.max_grad_norm > 0:
                    # two norms: the heads' gradients must not rescale the policy's (decoupled = PPO alone)
                    self.clip_each_group(args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.after_optimizer_step()
        self._log_update_metrics(stats)

    def after_optimizer_step(self) -> None:
        """Called after each optimizer step (the world model updates its slow critic here); PPO has nothing to do."""

    def compute_losses(self, model, batch: Rollouts) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The loss terms of one micro-batch, by name (the total is their sum), and detached statistics.
        Terms from `auxiliary_losses` are summed, backpropagated and logged with PPO's."""
        args, C = self.args, batch.context_length
        full_logits, values = model(batch.query_responses, batch.attention_mask)
        hidden = self.mtp_model.trunk.hidden  # this forward's h [B, L, d], graph attached
        logits = self.response_logits(full_logits, C)
        new_logprobs = core.logprobs_of(logits, batch.responses)
        policy_loss, policy_stats = core.clipped_policy_loss(
            new_logprobs, batch.logprobs, batch.advantages, batch.mask, args.cliprange
        )
        unwrapped = self.accelerator.unwrap_model(model)
        value_loss, value_stats = self.value_loss(unwrapped, hidden[:, C - 1 : -1], values[:, C - 1 : -1], batch)
        # MTP on the rollout tokens, from the hidden states of the forward above: labels = the response only, of
        # the samples `mtp_sample_filter` keeps
        labels = batch.query_responses.masked_fill(batch.attention_mask == 0, IGNORE_INDEX)
        labels[:, :C] = IGNORE_INDEX
        labels = filter_mtp_labels(labels, batch.advantages, args.mtp_sample_filter, batch.mask)
        mtp_term = self.mtp_loss_term(
            {"input_ids": batch.query_responses, "labels": labels, "attention_mask": batch.attention_mask},
            policy_loss=policy_loss,
        )
        terms = {"policy": policy_loss, "value": args.vf_coef * value_loss, "mtp": mtp_term}
        extra_terms, extra_stats = self.auxiliary_losses(unwrapped, hidden, full_logits.detach(), batch)
        terms.update(extra_terms)
        with torch.no_grad():
            stats = {
                "policy/approxkl": policy_stats["approxkl"],
                "policy/clipfrac": policy_stats["clipfrac"],
                "policy/entropy": core.masked_mean(core.entropy_from_logits(logits), batch.mask),  # real tokens only
                "val/ratio": policy_stats["ratio"],
                "val/clipfrac": value_stats["clipfrac"],
                "loss/policy_raw": policy_loss.detach(),
                "loss/value_raw": value_loss.detach(),
                **{k: v.detach() for k, v in extra_stats.items()},
            }
        return terms, stats

    def value_loss(
        self, model: PolicyAndValue, hidden: torch.Tensor, values: torch.Tensor, batch: Rollouts
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic's loss and its `clipfrac`, from this forward's response-position hidden states [B, R, d] and
        values [B, R]: PPO's clipped value loss around V_old."""
        return core.clipped_value_loss(values, batch.values, batch.returns, batch.mask, self.args.cliprange_value)

    def auxiliary_losses(
        self, model: PolicyAndValue, hidden: torch.Tensor, logits: torch.Tensor, batch: Rollouts
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Loss terms trained beside PPO's (named; summed into the loss) and their statistics, from this forward's
        hidden states [B, L, d] (graph attached) and detached logits [B, L, V]. PPO has none."""
        return {}, {}

    # == logging =====================================================================================================
    def _mean_all(self, x: torch.Tensor) -> float:
        """Mean over every process of a tensor's mean."""
        return self.accelerator.gather_for_metrics(x.float().mean().reshape(1)).mean().item()

    def _log_rollout_metrics(self, r: Rollouts, contains_stop: torch.Tensor) -> None:
        metrics = self._metrics["train"]
        kl_sum, non_score_sum = r.kl.sum(1), r.non_score_rewards.sum(1)
        metrics["objective/kl"].append(self._mean_all(kl_sum))
        metrics["objective/entropy"].append(self._mean_all((-r.logprobs).sum(1)))  # sampled-token estimate
        metrics["objective/non_score_reward"].append(self._mean_all(non_score_sum))
        metrics["objective/rlhf_reward"].append(self._mean_all(r.scores + non_score_sum))
        metrics["objective/scores"].append(self._mean_all(r.scores))
        metrics["val/num_eos_tokens"].append(
            self.accelerator.gather_for_metrics(contains_stop.sum().float().reshape(1)).sum().item()
        )
        metrics["val/response_length"].append(self._mean_all(r.mask.sum(1).float()))
        metrics["val/explained_variance"].append(self._mean_all(core.explained_variance(r.values, r.returns, r.mask)))

    def _log_update_metrics(self, stats: dict[str, list]) -> None:
        metrics = self._metrics["train"]
        renamed = {
            "policy/approxkl": "policy/approxkl_avg",
            "policy/clipfrac": "policy/clipfrac_avg",
            "policy/entropy": "policy/entropy_avg",
            "val/ratio": "val/ratio",
            "val/clipfrac": "val/clipfrac_avg",
            "loss/policy_raw": "loss/policy_avg",
            "loss/value_raw": "loss/value_avg",
        }
        # loss/policy and loss/value are logged as TRL's loss/policy_avg, loss/value_avg; any other statistic (the
        # other loss terms, an auxiliary loss's own) as it is
        for name in [n for n in stats if n not in renamed and n not in ("loss/policy", "loss/value")]:
            metrics[name].append(self._mean_all(torch.stack(stats[name])))
        ratios = self.accelerator.gather_for_metrics(torch.stack(stats["val/ratio"]).float())
        metrics["val/ratio_var"].append(ratios.var().item() if ratios.numel() > 1 else 0.0)
        for name, logged in renamed.items():
            metrics[logged].append(self._mean_all(torch.stack(stats[name])))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Averages of the metrics gathered since the last log, plus `lr` and `episode`."""
        logs = {**{k: sum(v) / len(v) for k, v in self._metrics["train"].items() if v}, **logs}
        logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        logs["episode"] = self.state.global_step * self.batch_size
        self._metrics["train"].clear()
        super().log(logs, start_time)

    # == save and resume =============================================================================================
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """MTPForCausalLM layout (policy weights or PEFT adapters, `mtp_heads.safetensors`, `mtp_config.json`), plus
        the critic (`value_head.safetensors` or `value_model/`), the tokenizer and the arguments."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model_wrapped)
        # under FSDP / ZeRO-3 the Trainer passes the gathered full state dict (the modules hold only their shards);
        # None: the modules' own tensors
        heads, policy = split_heads(sub_state(state_dict, "policy."))
        unwrapped.policy.save_pretrained(output_dir, state_dict=policy)
        self.mtp_model.save_heads(output_dir, state=heads)
        if unwrapped.value_head is not None:
            value = sub_state(state_dict, "value_head.")
            save_states(
                os.path.join(output_dir, VALUE_HEAD_FILE),
                {"": unwrapped.value_head},
                None if value is None else {"": value},
            )
        else:
            value_dir = os.path.join(output_dir, VALUE_MODEL_DIR)
            unwrapped.value_model.save_pretrained(value_dir, state_dict=sub_state(state_dict, "value_model."))
        self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Policy (or adapters), heads and critic from a checkpoint written by `_save`."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        Trainer._load_from_checkpoint(self, resume_from_checkpoint, model=unwrapped.policy)
        self.mtp_model.load_heads(resume_from_checkpoint)
        if unwrapped.value_head is not None:
            load_states(
                os.path.join(resume_from_checkpoint, VALUE_HEAD_FILE),
                {"": unwrapped.value_head},
                device=str(self.mtp_model.device),
            )
        else:
            Trainer._load_from_checkpoint(
                self, os.path.join(resume_from_checkpoint, VALUE_MODEL_DIR), model=unwrapped.value_model
            )


PPOTrainer = MTPPPOTrainer  # the former name (TRL's own `PPOTrainer` lives in trl.experimental.ppo)


def save_states(path: str, modules: dict[str, torch.nn.Module], states: dict[str, dict] | None = None) -> None:
    """The state dicts of `modules` in one safetensors file, each key prefixed with its module's name ("": none).
    `states`: tensors to write instead of a module's own, by name (its gathered full tensors under FSDP / ZeRO-3); an
    empty one for a module with state (its prefix missing from the gathered dict) is refused, not written as nothing."""
    states = states or {}
    for name, module in modules.items():
        if name in states and not states[name] and module.state_dict():
            raise ValueError(f"{path}: the gathered state dict has no tensors for {name or 'the module'!r}")
    state = {
        f"{name}.{k}" if name else k: v.detach().contiguous().cpu()
        for name, module in modules.items()
        for k, v in (states[name] if name in states else module.state_dict()).items()
    }
    save_file(state, path, metadata={"format": "pt"})


def sub_state(state_dict: dict | None, prefix: str) -> dict | None:
    """The entries of `state_dict` under `prefix`, the prefix removed; None for None."""
    if state_dict is None:
        return None
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_states(path: str, modules: dict[str, torch.nn.Module], device: str) -> None:
    """Load into `modules` (strictly) what `save_states` wrote to `path`."""
    state = load_file(path, device=device)
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
