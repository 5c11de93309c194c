"""`PPOConfig`: the configuration of TRL's former PPOTrainer (same field names), plus the MTP fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from trl_mtp.trainers.mtp_args import MTPArguments

KL_ESTIMATORS = ("k1", "k3")
WM_DYNAMICS = ("auto", "sequential", "mlp")
WM_LATENT_LOSSES = ("cosine", "mse", "none")
WM_CRITICS = ("twohot", "scalar")
WM_RETURN_NORMS = ("percentile", "whiten")
WM_GRADIENTS = ("decoupled", "coupled")


@dataclass
class PPOConfig(MTPArguments, TrainingArguments):
    r"""
    Configuration of [`PPOTrainer`]: every field of `transformers.TrainingArguments`, the PPO fields of TRL's former
    `PPOConfig` (same names and meanings), and the MTP fields of [`MTPSFTConfig`] (`head_type`, `num_mtp_heads`,
    `mode`, `mtp_lambda`, the schedules, ...; their "steps" are PPO iterations here).

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
        speculative_rollouts (`bool`, defaults to `False`):
            Sample the rollouts with self-speculative decoding from the MTP heads
            (`MTPForCausalLM.speculative_generate`): lossless in distribution (speculative rejection sampling), so
            PPO sees the same rollout distribution; logs `spec/mean_accepted_length` and `spec/acceptance_pos_{i}`.
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

    World model (`trl_mtp/world_model.py`; every `wm_*` field acts only with `world_model=True`; the defaults switch
    every part on, DreamerV3's values; set one off to ablate it):

        world_model (`bool`, defaults to `False`):
            Train a latent world model on the rollouts (prior h^_{t+1} = f(h_t, emb(a_t)), posterior = the trunk's h_{t+1}).
        wm_dynamics (`str`, defaults to `"auto"`):
            The prior f: `"sequential"` (the sequential MTP heads' chain; needs `head_type="sequential"`), `"mlp"` (a
            small residual MLP of the world model's own), `"auto"` (sequential when the heads are, else mlp).
        wm_unroll_steps (`int`, defaults to `2`):
            K: steps the prior is unrolled on real tokens (depths beyond `num_mtp_heads` reuse the last head's block).
        wm_latent_loss (`str`, defaults to `"cosine"`):
            Distance of predicted to stop-gradient real latents: `"cosine"`, `"mse"`, or `"none"` (off).
        wm_latent_coef (`float`, defaults to `1.0`):
            Weight of the latent loss.
        wm_token_kl_coef (`float`, defaults to `0.1`):
            Weight of KL(p(.|h_{t+i}) || p(.|h^_{t+i})) between the token distributions of real and predicted latents
            (NextLat); 0: off.
        wm_token_kl_free_bits (`float`, defaults to `0.0`):
            Free nats of the token-distribution KL (its per-position values are far below DreamerV3's 1 nat, which
            would switch it off); 0: off.
        wm_reward_head (`bool`, defaults to `True`), wm_reward_coef (`float`, defaults to `1.0`):
            A two-hot head predicting the per-token reward from the latent after each token, and its weight.
        wm_continue_head (`bool`, defaults to `True`), wm_continue_coef (`float`, defaults to `1.0`):
            A head predicting whether the response continues after each token (0 on its last token), and its weight.
        wm_critic (`str`, defaults to `"twohot"`):
            The critic: `"twohot"` (two-hot over `wm_num_bins` bins, zero-initialised output; its loss is the
            two-hot cross-entropy, unclipped) or `"scalar"` (the PPO value head and its clipped MSE loss).
        wm_num_bins (`int`, defaults to `255`):
            Bins of the two-hot heads (critic and reward): symexp of `wm_num_bins` points evenly spaced in [-20, 20].
        wm_slow_critic_coef (`float`, defaults to `1.0`), wm_slow_critic_decay (`float`, defaults to `0.98`):
            Weight of the regulariser of the critic toward an EMA copy of itself, and the EMA decay; 0: off.
        wm_imagination_horizon (`int`, defaults to `4`):
            H: imagined steps from each real prefix (prior rolled with head-sampled tokens); 0: no imagination.
        wm_imagination_lambda (`float`, defaults to `0.95`):
            Lambda of the imagined lambda-returns.
        wm_imagination_coef (`float`, defaults to `1.0`):
            Weight (times `vf_coef`) of the critic loss toward the imagined lambda-returns (critic targets only: the
            policy never gets a gradient from imagined tokens).
        wm_return_norm (`str`, defaults to `"percentile"`):
            Advantage normalisation: `"percentile"` (A / max(1, EMA(P95) - EMA(P5)) of the returns, DreamerV3) or
            `"whiten"` (PPO's batch whitening).
        wm_return_norm_decay (`float`, defaults to `0.99`):
            EMA decay of the return percentiles.
        wm_gradient (`str`, defaults to `"decoupled"`):
            `"decoupled"`: the world model and the critic it trains read a detached trunk (the trunk gets the policy
            loss only). `"coupled"`: the world-model losses reach the trunk, scaled by `wm_repr_coef`, and the critic
            trains the trunk as in plain PPO.
        wm_repr_coef (`float`, defaults to `0.1`):
            Gradient scale of the world-model losses into the trunk with `wm_gradient="coupled"`.
    """

    # -- overridden defaults (PPO's, not Trainer's) --
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate (AdamW)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N PPO iterations."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; `None` (default): on where a GPU supports it, off on CPU."})
    mode: str = field(default="decoupled", metadata={
        "help": "`decoupled` (default in PPO): the MTP loss trains the heads only, the policy is driven by the PPO "
                "loss alone. `coupled`: the MTP loss also trains the trunk (a densified auxiliary signal)."})
    mtp_lambda: float = field(default=0.3, metadata={"help": "Weight of the MTP loss added to the PPO loss."})

    # -- PPO (names of TRL's former PPOConfig / OnPolicyConfig) --
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes of PPO updates over each batch of rollouts."})
    num_mini_batches: int = field(default=1, metadata={"help": "Mini-batches (optimizer steps) per PPO epoch."})
    total_episodes: int | None = field(default=None, metadata={
        "help": "Total rollouts in training; used when `max_steps` is -1 (default: num_train_epochs * dataset size)."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={
        "help": "Rows per chunk in the no-grad rollout passes (generation, log-probs, reference, values, reward)."})
    response_length: int = field(default=53, metadata={"help": "Maximum number of generated tokens per response."})
    stop_token: str | None = field(default="eos", metadata={
        "help": "`eos`: responses end at the tokenizer's EOS. `None`: no stop token unless `stop_token_id` is set."})
    stop_token_id: int | None = field(default=None, metadata={
        "help": "Token id that ends a response; overrides `stop_token`."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    speculative_rollouts: bool = field(default=False, metadata={
        "help": "Sample rollouts with self-speculative decoding from the MTP heads (lossless in distribution)."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the score of responses without the stop token. None: no penalty."})
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the per-token KL penalty in the reward."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Per-token KL estimator: `k1` (log pi - log pi_ref) or `k3` ((r - 1) - log r, r = pi_ref / pi).",
        "choices": list(KL_ESTIMATORS)})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value around its old value."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    whiten_rewards: bool = field(default=False, metadata={
        "help": "Scale the per-token rewards by their standard deviation (mean kept) before GAE."})
    reward_weights: list[float] | None = field(default=None, metadata={
        "help": "Weights of the reward functions (score = weighted sum); None: all 1.0."})
    model_init_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Keyword arguments of `from_pretrained` for models given as paths or hub ids."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow custom model code from the hub when loading models by name (as TRL's configs)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Dropout off in the policy, critic, reference and reward model (pi_old is computed in eval mode)."})

    # -- world model (trl_mtp/world_model.py); wm_* fields act only with world_model=True --
    world_model: bool = field(default=False, metadata={
        "help": "Train a latent world model on the rollouts (prior f(h_t, emb(a_t)), posterior = the trunk's h_{t+1})."})
    wm_dynamics: str = field(default="auto", metadata={
        "help": "Prior: `sequential` (the sequential MTP heads' chain), `mlp` (own residual MLP), `auto`.",
        "choices": list(WM_DYNAMICS)})
    wm_unroll_steps: int = field(default=2, metadata={"help": "K: steps of the prior unrolled on real tokens."})
    wm_latent_loss: str = field(default="cosine", metadata={
        "help": "Distance of predicted to stop-gradient real latents: `cosine`, `mse` or `none`.",
        "choices": list(WM_LATENT_LOSSES)})
    wm_latent_coef: float = field(default=1.0, metadata={"help": "Weight of the latent loss."})
    wm_token_kl_coef: float = field(default=0.1, metadata={
        "help": "Weight of the KL between token distributions of real and predicted latents (NextLat); 0: off."})
    wm_token_kl_free_bits: float = field(default=0.0, metadata={"help": "Free nats of the token KL; 0: off."})
    wm_reward_head: bool = field(default=True, metadata={"help": "Two-hot reward head on latents."})
    wm_reward_coef: float = field(default=1.0, metadata={"help": "Weight of the reward head's loss."})
    wm_continue_head: bool = field(default=True, metadata={"help": "Continue (EOS) head on latents."})
    wm_continue_coef: float = field(default=1.0, metadata={"help": "Weight of the continue head's loss."})
    wm_critic: str = field(default="twohot", metadata={
        "help": "Critic: `twohot` (two-hot over symexp bins, zero-init output) or `scalar` (PPO's value head).",
        "choices": list(WM_CRITICS)})
    wm_num_bins: int = field(default=255, metadata={"help": "Bins of the two-hot heads: symexp(linspace(-20, 20, n))."})
    wm_slow_critic_coef: float = field(default=1.0, metadata={
        "help": "Weight of the critic's regulariser toward its EMA copy; 0: off."})
    wm_slow_critic_decay: float = field(default=0.98, metadata={"help": "EMA decay of the slow critic."})
    wm_imagination_horizon: int = field(default=4, metadata={
        "help": "H: imagined steps from each real prefix; 0: no imagination."})
    wm_imagination_lambda: float = field(default=0.95, metadata={"help": "Lambda of the imagined lambda-returns."})
    wm_imagination_coef: float = field(default=1.0, metadata={
        "help": "Weight (times vf_coef) of the critic loss toward imagined lambda-returns."})
    wm_return_norm: str = field(default="percentile", metadata={
        "help": "Advantage normalisation: `percentile` (A / max(1, EMA(P95) - EMA(P5)), DreamerV3) or `whiten`.",
        "choices": list(WM_RETURN_NORMS)})
    wm_return_norm_decay: float = field(default=0.99, metadata={"help": "EMA decay of the return percentiles."})
    wm_gradient: str = field(default="decoupled", metadata={
        "help": "`decoupled`: the trunk gets the policy loss only; `coupled`: world-model losses reach the trunk, "
                "scaled by wm_repr_coef.", "choices": list(WM_GRADIENTS)})
    wm_repr_coef: float = field(default=0.1, metadata={
        "help": "Gradient scale of the world-model losses into the trunk when coupled."})

    def __post_init__(self):
        def bad(name: str, why: str):
            raise ValueError(f"PPOConfig.{name}={getattr(self, name)!r}: {why}")

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
        self._check_world_model(bad)
        super().__post_init__()

    def _check_world_model(self, bad) -> None:
        for name, choices in (("wm_dynamics", WM_DYNAMICS), ("wm_latent_loss", WM_LATENT_LOSSES),
                              ("wm_critic", WM_CRITICS), ("wm_return_norm", WM_RETURN_NORMS),
                              ("wm_gradient", WM_GRADIENTS)):
            if getattr(self, name) not in choices:
                bad(name, f"choose from {', '.join(choices)}")
        if self.wm_unroll_steps < 1:
            bad("wm_unroll_steps", "must be >= 1")
        if self.wm_num_bins < 3 or self.wm_num_bins % 2 == 0:
            bad("wm_num_bins", "must be odd and >= 3 (symmetric bins, one at 0)")
        if self.wm_imagination_horizon < 0:
            bad("wm_imagination_horizon", "must be >= 0 (0: no imagination)")
        for name in ("wm_latent_coef", "wm_token_kl_coef", "wm_token_kl_free_bits", "wm_reward_coef",
                     "wm_continue_coef", "wm_slow_critic_coef", "wm_imagination_coef", "wm_repr_coef"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        for name in ("wm_slow_critic_decay", "wm_imagination_lambda", "wm_return_norm_decay"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, "must be in [0, 1]")
        if self.world_model:
            if self.wm_dynamics == "sequential" and self.head_type != "sequential":
                bad("wm_dynamics", "'sequential' needs head_type='sequential' (or use 'mlp' / 'auto')")
            if self.wm_imagination_horizon > 0 and self.wm_imagination_coef > 0 and not (
                    self.wm_reward_head and self.wm_continue_head):
                bad("wm_imagination_horizon", "imagination needs the reward and continue heads (or set it to 0)")
