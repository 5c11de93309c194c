"""`WorldModelPPOConfig`: `MTPPPOConfig` plus the fields of the latent world model (`trl_mtp/world_model.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl_mtp.trainers.ppo_config import MTPPPOConfig, reject

WM_DYNAMICS = ("auto", "sequential", "mlp")
WM_LATENT_LOSSES = ("cosine", "mse", "none")
WM_CRITICS = ("twohot", "scalar")
WM_RETURN_NORMS = ("percentile", "whiten")
WM_GRADIENTS = ("decoupled", "coupled")


@dataclass
class WorldModelPPOConfig(MTPPPOConfig):
    r"""
    Configuration of [`WorldModelPPOTrainer`]: every field of [`MTPPPOConfig`], plus the world model's. The defaults
    switch every part on, DreamerV3's values; set one off to ablate it.

    Parameters:
        world_model (`bool`, defaults to `True`):
            Train a latent world model on the rollouts (prior h^_{t+1} = f(h_t, emb(a_t)), posterior = the trunk's
            h_{t+1}). Always on here (it names the choice in configs and on the command line); PPO without a world
            model is `MTPPPOConfig`.
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

    world_model: bool = field(
        default=True,
        metadata={
            "help": "Train a latent world model on the rollouts (prior f(h_t, emb(a_t)), posterior = the trunk's h_{t+1}); "
            "always on here (PPO without it: MTPPPOConfig)."
        },
    )
    wm_dynamics: str = field(
        default="auto",
        metadata={
            "help": "Prior: `sequential` (the sequential MTP heads' chain), `mlp` (own residual MLP), `auto`.",
            "choices": list(WM_DYNAMICS),
        },
    )
    wm_unroll_steps: int = field(default=2, metadata={"help": "K: steps of the prior unrolled on real tokens."})
    wm_latent_loss: str = field(
        default="cosine",
        metadata={
            "help": "Distance of predicted to stop-gradient real latents: `cosine`, `mse` or `none`.",
            "choices": list(WM_LATENT_LOSSES),
        },
    )
    wm_latent_coef: float = field(default=1.0, metadata={"help": "Weight of the latent loss."})
    wm_token_kl_coef: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the KL between token distributions of real and predicted latents (NextLat); 0: off."
        },
    )
    wm_token_kl_free_bits: float = field(default=0.0, metadata={"help": "Free nats of the token KL; 0: off."})
    wm_reward_head: bool = field(default=True, metadata={"help": "Two-hot reward head on latents."})
    wm_reward_coef: float = field(default=1.0, metadata={"help": "Weight of the reward head's loss."})
    wm_continue_head: bool = field(default=True, metadata={"help": "Continue (EOS) head on latents."})
    wm_continue_coef: float = field(default=1.0, metadata={"help": "Weight of the continue head's loss."})
    wm_critic: str = field(
        default="twohot",
        metadata={
            "help": "Critic: `twohot` (two-hot over symexp bins, zero-init output) or `scalar` (PPO's value head).",
            "choices": list(WM_CRITICS),
        },
    )
    wm_num_bins: int = field(default=255, metadata={"help": "Bins of the two-hot heads: symexp(linspace(-20, 20, n))."})
    wm_slow_critic_coef: float = field(
        default=1.0, metadata={"help": "Weight of the critic's regulariser toward its EMA copy; 0: off."}
    )
    wm_slow_critic_decay: float = field(default=0.98, metadata={"help": "EMA decay of the slow critic."})
    wm_imagination_horizon: int = field(
        default=4, metadata={"help": "H: imagined steps from each real prefix; 0: no imagination."}
    )
    wm_imagination_lambda: float = field(default=0.95, metadata={"help": "Lambda of the imagined lambda-returns."})
    wm_imagination_coef: float = field(
        default=1.0, metadata={"help": "Weight (times vf_coef) of the critic loss toward imagined lambda-returns."}
    )
    wm_return_norm: str = field(
        default="percentile",
        metadata={
            "help": "Advantage normalisation: `percentile` (A / max(1, EMA(P95) - EMA(P5)), DreamerV3) or `whiten`.",
            "choices": list(WM_RETURN_NORMS),
        },
    )
    wm_return_norm_decay: float = field(default=0.99, metadata={"help": "EMA decay of the return percentiles."})
    wm_gradient: str = field(
        default="decoupled",
        metadata={
            "help": "`decoupled`: the trunk gets the policy loss only; `coupled`: world-model losses reach the trunk, "
            "scaled by wm_repr_coef.",
            "choices": list(WM_GRADIENTS),
        },
    )
    wm_repr_coef: float = field(
        default=0.1, metadata={"help": "Gradient scale of the world-model losses into the trunk when coupled."}
    )

    def __post_init__(self):
        def bad(name: str, why: str):
            reject(self, name, why)

        if not self.world_model:
            bad("world_model", "WorldModelPPOConfig always trains the world model; use MTPPPOConfig for PPO without it")
        for name, choices in (
            ("wm_dynamics", WM_DYNAMICS),
            ("wm_latent_loss", WM_LATENT_LOSSES),
            ("wm_critic", WM_CRITICS),
            ("wm_return_norm", WM_RETURN_NORMS),
            ("wm_gradient", WM_GRADIENTS),
        ):
            if getattr(self, name) not in choices:
                bad(name, f"choose from {', '.join(choices)}")
        if self.wm_unroll_steps < 1:
            bad("wm_unroll_steps", "must be >= 1")
        if self.wm_num_bins < 3 or self.wm_num_bins % 2 == 0:
            bad("wm_num_bins", "must be odd and >= 3 (symmetric bins, one at 0)")
        if self.wm_imagination_horizon < 0:
            bad("wm_imagination_horizon", "must be >= 0 (0: no imagination)")
        for name in (
            "wm_latent_coef",
            "wm_token_kl_coef",
            "wm_token_kl_free_bits",
            "wm_reward_coef",
            "wm_continue_coef",
            "wm_slow_critic_coef",
            "wm_imagination_coef",
            "wm_repr_coef",
        ):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        for name in ("wm_slow_critic_decay", "wm_imagination_lambda", "wm_return_norm_decay"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, "must be in [0, 1]")
        if self.wm_dynamics == "sequential" and self.head_type != "sequential":
            bad("wm_dynamics", "'sequential' needs head_type='sequential' (or use 'mlp' / 'auto')")
        if (
            self.wm_imagination_horizon > 0
            and self.wm_imagination_coef > 0
            and not (self.wm_reward_head and self.wm_continue_head)
        ):
            bad("wm_imagination_horizon", "imagination needs the reward and continue heads (or set it to 0)")
        super().__post_init__()


def selects_world_model(field_names) -> bool:
    """Whether the fields given (on a command line, in a YAML config, as keyword arguments) ask for world-model PPO:
    `world_model` or any `wm_*` field."""
    return any(name == "world_model" or name.startswith("wm_") for name in field_names)
