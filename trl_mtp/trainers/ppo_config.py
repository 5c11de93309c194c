"""`MTPPPOConfig` (alias `PPOConfig`): the configuration of TRL's former PPOTrainer (same field names), plus the MTP
fields. The world model's fields are in `WorldModelPPOConfig`, a subclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from trl_mtp.trainers.mtp_args import MTPArguments, RLHeadArguments

KL_ESTIMATORS = ("k1", "k3")


def reject(config, name: str, why: str):
    """Raise the one-line error of a bad config field: `Class.name=value: why`."""
    raise ValueError(f"{type(config).__name__}.{name}={getattr(config, name)!r}: {why}")


@dataclass
class MTPPPOConfig(RLHeadArguments, MTPArguments, TrainingArguments):
    r"""
    Configuration of [`MTPPPOTrainer`]: every field of `transformers.TrainingArguments`, the PPO fields of TRL's former
    `PPOConfig` (same names and meanings), and the MTP fields of [`MTPSFTConfig`] (`head_type`, `num_mtp_heads`,
    `mode`, `mtp_lambda`, the schedules, ...; their "steps" are PPO iterations here), and the RL fields shared with
    GRPO and RLOO (`RLHeadArguments`: `speculative_rollouts`, `adaptive_draft_tokens`, `mtp_sample_filter`, alarms).

    Batch sizes, per process: one PPO iteration samples `per_device_train_batch_size * gradient_accumulation_steps *
    num_mini_batches` prompts, generates one response each, then makes `num_ppo_epochs * num_mini_batches` optimizer
    steps over them (each step accumulates `gradient_accumulation_steps` micro-batches of
    `per_device_train_batch_size`). `max_steps` is the number of PPO iterations; when it is not set (-1) it is
    `ceil(total_episodes / batch)`, and `total_episodes` defaults to `num_train_epochs * len(train_dataset)`.

    Parameters:
        num_ppo_epochs (`int`, defaults to `4`):
            Passes of PPO updates over each batch of rollouts.
        num_mini_batches (`int`, defaults to `1`):
            Mini-batches (optimizer steps) per PPO epoch.
        total_episodes (`int` or `None`, defaults to `None`):
            Total number of rollouts (prompts sampled) in training; used when `max_steps` is -1.
        local_rollout_forward_batch_size (`int`, defaults to `64`):
            Rows per chunk in the no-grad rollout passes (generation, old log-probs, reference, values, reward model).
        response_length (`int`, defaults to `53`):
            Maximum number of generated tokens per response.
        stop_token (`str` or `None`, defaults to `"eos"`):
            `"eos"`: responses end at the tokenizer's EOS token (generation stops there and anything after it is
            padding). `None`: no stop token unless `stop_token_id` is set. (TRL's former default was `None`.)
        stop_token_id (`int` or `None`, defaults to `None`):
            Token id that ends a response; overrides `stop_token`.
        temperature (`float`, defaults to `0.7`):
            Sampling temperature of the rollouts; the log-probabilities of the policy and the reference are computed
            from logits divided by it, so they are those of the sampling distribution.
        missing_eos_penalty (`float` or `None`, defaults to `None`):
            Subtracted from the score of each response that does not contain the stop token (the EOS when there is
            no stop token). `None`: no penalty.
        kl_coef (`float`, defaults to `0.05`):
            Weight of the per-token KL penalty against the reference model in the reward.
        kl_estimator (`str`, defaults to `"k1"`):
            Per-token KL estimator: `"k1"` (log pi - log pi_ref, unbiased, noisy) or `"k3"` ((r - 1) - log r with
            r = pi_ref / pi, unbiased, non-negative, lower variance).
        cliprange (`float`, defaults to `0.2`):
            Clip range epsilon of the policy ratio.
        vf_coef (`float`, defaults to `0.1`):
            Weight of the value loss in the total loss.
        cliprange_value (`float`, defaults to `0.2`):
            Clip range of the value prediction around the rollout-time value.
        gamma (`float`, defaults to `1.0`):
            Discount factor.
        lam (`float`, defaults to `0.95`):
            Lambda of Generalized Advantage Estimation.
        whiten_rewards (`bool`, defaults to `False`):
            Scale the per-token rewards by their standard deviation (mean kept) before GAE.
        reward_weights (`list[float]` or `None`, defaults to `None`):
            Weights of the reward functions (the score is their weighted sum); `None`: all 1.0.
        model_init_kwargs (`dict` or `None`, defaults to `None`):
            Keyword arguments of `from_pretrained` when `model` (or `ref_model`, `value_model`, `reward_model`) is a
            path or hub id.
        trust_remote_code (`bool`, defaults to `False`):
            Allow custom model code from the hub when loading models by name (the field of TRL's configs).
        disable_dropout (`bool`, defaults to `True`):
            Set every dropout probability of the policy, the critic, the reference and the reward model to 0 (as TRL's
            trainers do): pi_old is computed in eval mode and the update runs in train mode, so with dropout the
            first ratio is not 1 and PPO clips dropout noise.
    """

    # -- overridden defaults (PPO's, not Trainer's) --
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate (AdamW)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N PPO iterations."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; `None` (default): on where a GPU supports it, off on CPU."},
    )
    mode: str = field(
        default="decoupled",
        metadata={
            "help": "`decoupled` (default in PPO): the MTP loss trains the heads only, the policy is driven by the PPO "
            "loss alone. `coupled`: the MTP loss also trains the trunk (a densified auxiliary signal)."
        },
    )
    mtp_lambda: float = field(default=0.3, metadata={"help": "Weight of the MTP loss added to the PPO loss."})

    # -- PPO (names of TRL's former PPOConfig / OnPolicyConfig) --
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes of PPO updates over each batch of rollouts."})
    num_mini_batches: int = field(default=1, metadata={"help": "Mini-batches (optimizer steps) per PPO epoch."})
    total_episodes: int | None = field(
        default=None,
        metadata={
            "help": "Total rollouts in training; used when `max_steps` is -1 (default: num_train_epochs * dataset size)."
        },
    )
    local_rollout_forward_batch_size: int = field(
        default=64,
        metadata={
            "help": "Rows per chunk in the no-grad rollout passes (generation, log-probs, reference, values, reward)."
        },
    )
    response_length: int = field(default=53, metadata={"help": "Maximum number of generated tokens per response."})
    stop_token: str | None = field(
        default="eos",
        metadata={
            "help": "`eos`: responses end at the tokenizer's EOS. `None`: no stop token unless `stop_token_id` is set."
        },
    )
    stop_token_id: int | None = field(
        default=None, metadata={"help": "Token id that ends a response; overrides `stop_token`."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the score of responses without the stop token. None: no penalty."},
    )
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the per-token KL penalty in the reward."})
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "Per-token KL estimator: `k1` (log pi - log pi_ref) or `k3` ((r - 1) - log r, r = pi_ref / pi).",
            "choices": list(KL_ESTIMATORS),
        },
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value around its old value."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    whiten_rewards: bool = field(
        default=False,
        metadata={"help": "Scale the per-token rewards by their standard deviation (mean kept) before GAE."},
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weights of the reward functions (score = weighted sum); None: all 1.0."}
    )
    model_init_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of `from_pretrained` for models given as paths or hub ids."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom model code from the hub when loading models by name (as TRL's configs)."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Dropout off in the policy, critic, reference and reward model (pi_old is computed in eval mode)."
        },
    )

    def __post_init__(self):
        def bad(name: str, why: str):
            reject(self, name, why)

        for name in ("num_ppo_epochs", "num_mini_batches", "local_rollout_forward_batch_size", "response_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "must be an integer >= 1")
        if self.total_episodes is not None and self.total_episodes < 1:
            bad("total_episodes", "must be None or >= 1")
        if self.stop_token not in (None, "eos"):
            bad("stop_token", "must be 'eos' or None (use stop_token_id for another token)")
        if not self.temperature > 0:
            bad("temperature", "must be > 0")
        if self.kl_estimator not in KL_ESTIMATORS:
            bad("kl_estimator", f"choose from {', '.join(KL_ESTIMATORS)}")
        for name in ("cliprange", "cliprange_value", "vf_coef", "kl_coef"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if not 0 <= self.gamma <= 1:
            bad("gamma", "must be in [0, 1]")
        if not 0 <= self.lam <= 1:
            bad("lam", "must be in [0, 1]")
        super().__post_init__()


PPOConfig = MTPPPOConfig  # the former name (TRL's own `PPOConfig` lives in trl.experimental.ppo)
