"""A latent world model inside PPO, from the Dreamer family, riding on the policy's own hidden states.

The seed's duality: in text the state is the prefix, s_t = (a_1..a_{t-1}), so predicting the next tokens is predicting
the next states, s_{t+i} = s_t o (a_t..a_{t+i-1}). Here

    state      h_t         the trunk's pre-norm last hidden state at position t (the posterior: the real h_{t+1} is
                           what the trunk computes once token a_t is appended)
    action     a_t         the token sampled at position t (response token j sits at column C + j)
    prior      h^_{t+1} = f(h_t, emb(a_t))   the sequential MTP head's chain (DeepSeek-V3: depth i at position t reads
                           emb(x_{t+i}) and h^_{t+i-1}, so its latent is exactly a prediction of h_{t+i}), or a small MLP

The transition is deterministic: s_{t+1} = s_t o a_t, and h_{t+1} is a function of the prefix. All the randomness is
in the action (the sampled token), which imagination samples explicitly, so the model has no stochastic latent
(DreamerV3's z models what the next observation adds beyond history and action; here it adds nothing).

Parts (each a `WorldModelPPOConfig` switch, `wm_*` fields, so that each can be ablated):

1. latent dynamics: K-step unroll of the prior on real tokens; cosine (or MSE) to stop-gradient posteriors, plus the KL
   between the token distributions of predicted and real latents (NextLat).
2. reward and continue (EOS) heads on latents; two-hot critic over symexp-spaced bins (255, zero-initialised output)
   with the EMA slow-critic regulariser (DreamerV3).
3. imagination: from every real prefix, an independent rollout of the prior for H steps with head-sampled tokens;
   lambda-returns from the reward / continue / value heads become extra critic targets. All of it runs without
   gradient: imagined tokens never receive a policy-gradient step.
4. return normalisation: advantages / max(1, EMA(P95) - EMA(P5)) instead of whitening (DreamerV3).

Gradient routing: `decoupled` (default): everything the world model trains, the critic included, reads sg(h) and the
policy's frozen norm / LM head / embeddings, so the policy's update is the policy loss's (and the MTP loss's, as its
own mode says) whatever the world model's weights; the world model reaches the policy only through V_old in the next
iteration's advantages. `coupled`: the world-model losses reach the trunk scaled by `wm_repr_coef`, and the critic
trains the trunk as in plain PPO.

References: DreamerV3 = Hafner et al. 2023, "Mastering Diverse Domains through World Models" (arXiv:2301.04104);
its maths is in `trl_mtp/dreamer.py`. NextLat = Teoh et al. 2025, "Next-Latent Prediction Transformers Learn Compact
World Models"; DeepSeek-V3 = DeepSeek-AI 2024 (arXiv:2412.19437), section 2.2 MTP modules.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from trl_mtp.dreamer import PercentileNormalizer, free_bits, lambda_returns, twohot_bins, twohot_decode, twohot_loss
from trl_mtp.heads.base import shift_tokens
from trl_mtp.heads.trunk import call_layer
from trl_mtp.losses import masked_mean

# == 1. latent losses ================================================================================================


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward, scale * dL/dx in the backward (0: detach; 1: unchanged). Gradient routing of the world model
    into the trunk: decoupled (0) or coupled (`wm_repr_coef`)."""
    if scale == 0:
        return x.detach()
    if scale == 1:
        return x
    return x.detach() + scale * (x - x.detach())


def latent_distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Per-position distance of predicted to stop-gradient real latents, [..., d] -> [...]:
    cosine: 1 - cos(h^, sg(h));  mse: mean_d (h^ - sg(h))^2.  (NextLat: latent-prediction loss to a stop-gradient target,
    as in BYOL / SimSiam)"""
    target = target.detach()
    if kind == "cosine":
        return 1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)
    if kind == "mse":
        return (pred.float() - target.float()).pow(2).mean(-1)
    raise ValueError(f"latent loss {kind!r}: choose cosine or mse")


def token_kl(real_logits: torch.Tensor, pred_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(.|h_{t+i}) || p(.|h^_{t+i})) per position, the real distribution stop-gradient: [..., V] -> [...].
    (NextLat, Teoh et al. 2025: the predicted latent must decode to the same next-token distribution)"""
    log_p = F.log_softmax(real_logits.detach().float(), dim=-1)
    log_q = F.log_softmax(pred_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


# == 2. modules ======================================================================================================


class MLPDynamics(nn.Module):
    """h^_{t+1} = h_t + W2 SiLU(W1 [norm(h_t); norm(emb(a_t))]), W2 zero-initialised (the prior starts as 'nothing
    changes'). A Markov transition shared by every step, the alternative to the sequential head's chain."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hnorm = nn.LayerNorm(hidden_size)
        self.enorm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(2 * hidden_size, 2 * hidden_size)
        self.down = nn.Linear(2 * hidden_size, hidden_size)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, hidden: torch.Tensor, action_embedding: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.hnorm(hidden), self.enorm(action_embedding.to(hidden.dtype))], dim=-1)
        return hidden + self.down(F.silu(self.up(x)))


class TwoHotHead(nn.Module):
    """A two-hot regression head: MLP -> 255 logits over symexp-spaced bins, output layer zero-initialised (uniform over
    the symmetric bins, so the first prediction is exactly 0).  (DreamerV3: reward and critic heads, zero-init output
    layer; the bins and the decoding of its released code, `trl_mtp.dreamer.twohot_decode`)"""

    def __init__(self, hidden_size: int, num_bins: int = 255, mlp: bool = True):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU()) if mlp else nn.Identity()
        self.out = nn.Linear(hidden_size, num_bins)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("bins", twohot_bins(num_bins), persistent=False)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(features.to(self.out.weight.dtype))).float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Decoded prediction y_hat = sum_k softmax(logits)_k B_k, [..., d] -> [...]."""
        return twohot_decode(self.logits(features), self.bins)

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return twohot_loss(self.logits(features), target, self.bins)


class TwoHotValueHead(TwoHotHead):
    """The critic as a two-hot head on the policy's hidden state (a drop-in for `ValueHead`: forward returns
    V(s_t) [B, T]); a linear read-out, like the scalar head, so the critic's capacity is comparable."""

    def __init__(self, hidden_size: int, num_bins: int = 255):
        super().__init__(hidden_size, num_bins, mlp=False)


def critic_loss(value_head: nn.Module, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position critic loss toward a stop-gradient target: two-hot CE for a two-hot head, 0.5 (V - y)^2 else."""
    target = target.detach()
    if isinstance(value_head, TwoHotHead):
        return value_head.loss(features, target)
    return 0.5 * (value_head(features) - target) ** 2


class WorldModel(nn.Module):
    """The world model's own parameters (MLP prior, reward / continue heads, the slow critic) and its losses and
    imagination. The prior may be the policy's sequential MTP heads, which it does not own; the critic it trains is
    the policy-and-value module's value head."""

    def __init__(self, trunk, heads, args, value_head: nn.Module | None):
        super().__init__()
        self.trunk = trunk  # plain objects: the policy's modules are registered (and saved) by the policy
        self.args = args
        d = trunk.model.config.get_text_config().hidden_size
        self.dynamics_kind = resolve_dynamics(args)
        object.__setattr__(self, "_heads", heads)  # not a submodule: the heads belong to the policy
        self.dynamics = MLPDynamics(d) if self.dynamics_kind == "mlp" else None
        self.reward_head = TwoHotHead(d, args.wm_num_bins) if args.wm_reward_head else None
        self.continue_head = nn.Linear(d, 1) if args.wm_continue_head else None
        if args.wm_slow_critic_coef > 0 and value_head is not None:
            # EMA copy of the critic head, never optimised  (DreamerV3: "critic regularised toward its EMA")
            self.slow_critic = copy.deepcopy(value_head).requires_grad_(False)
        else:
            self.slow_critic = None
        # imagination calls so far: seeds imagination's own sampler; saved, so a resumed run samples what an
        # uninterrupted one would
        self.register_buffer("imagination_calls", torch.zeros((), dtype=torch.long))

    @property
    def heads(self):
        return self._heads

    @property
    def repr_scale(self) -> float:
        """Gradient scale of the trunk states the world model reads: 0 decoupled, `wm_repr_coef` coupled."""
        return self.args.wm_repr_coef if self.args.wm_gradient == "coupled" else 0.0

    # -- the prior ------------------------------------------------------------------------------------------------
    def prior_step(
        self, step: int, prev: torch.Tensor, tokens: torch.Tensor, layer_kwargs: dict | None
    ) -> torch.Tensor:
        """h^_{t+step} = f(h^_{t+step-1}, emb(a_{t+step-1})) at every position t: the sequential head's depth `step`
        (depths beyond D reuse the last depth's block), or the MLP prior.  (DeepSeek-V3 MTP module, eq. 21-22)"""
        frozen = self.repr_scale == 0  # the embeddings are the policy's
        if self.dynamics_kind == "sequential":
            depth = min(step, self.heads.num_depths)
            module = self.heads.layers[depth - 1]
            emb = self.trunk.embed(tokens, frozen=frozen)
            x = module.eh_proj(torch.cat([module.enorm(emb), module.hnorm(prev)], dim=-1))
            return call_layer(module.mtp_block, x, layer_kwargs)
        return self.dynamics(prev, self.trunk.embed(tokens, frozen=frozen))

    def prior_logits(self, step: int, latent: torch.Tensor) -> torch.Tensor:
        """Next-token logits of a predicted latent; the policy's norm and LM head are read frozen."""
        if self.dynamics_kind == "sequential":
            return self.heads.depth_logits(min(step, self.heads.num_depths), latent, frozen_base=True)
        return self.trunk.logits(latent, frozen=True)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Inputs of the reward / continue / critic heads: final_norm(h) (the policy's norm, read frozen)."""
        return self.trunk.norm(hidden, frozen=True)

    def critic_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the critic reads in PPO's value loss: norm(sg(h)) when decoupled, since the world model trains the
        critic too and a critic that trained the trunk would carry that into the policy; norm(h) when coupled, the
        critic training the trunk as in plain PPO."""
        with capture_preserved(self.trunk):
            return self.features(hidden.detach()) if self.repr_scale == 0 else self.trunk.norm(hidden)

    # -- training losses ------------------------------------------------------------------------------------------
    def losses(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context_length: int,
        real_logits: torch.Tensor,
        rewards: torch.Tensor,
        response_mask: torch.Tensor,
        value_head: nn.Module,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """World-model loss terms of one micro-batch, from the trunk states of the update's own forward.

        `hidden` [B, L, d] (graph attached), `real_logits` [B, L, V] (the policy's logits, read detached),
        `rewards`/`response_mask` [B, R] (per-token rewards of the rollouts). Returns (terms, stats)."""
        with capture_preserved(self.trunk):
            return self._losses(
                hidden, input_ids, attention_mask, context_length, real_logits, rewards, response_mask, value_head
            )

    def _losses(
        self, hidden, input_ids, attention_mask, context_length, real_logits, rewards, response_mask, value_head
    ):
        args, C = self.args, context_length
        terms, stats = {}, {}
        h = scale_gradient(hidden, self.repr_scale)
        attn = attention_mask.bool()
        if args.wm_latent_loss != "none" or args.wm_token_kl_coef > 0:
            terms.update(self._dynamics_losses(hidden, h, input_ids, attn, C, real_logits, stats))
        # reward and continue heads on the posterior states h_{t+1} = h at column C + j (after response token j)
        post = self.features(h[:, C:])
        mask = response_mask
        if self.reward_head is not None:
            per_token = self.reward_head.loss(post, rewards)  # two-hot  (DreamerV3, eq. 11)
            terms["wm_reward"] = args.wm_reward_coef * masked_mean(per_token, mask)
            with torch.no_grad():
                stats["wm/reward_pred_error"] = masked_mean((self.reward_head(post) - rewards).abs(), mask)
        if self.continue_head is not None:
            # c_j = 1 while the response goes on after token j, 0 on its last token (EOS or cut)  (DreamerV3, eq. 4)
            target = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1).float()
            logits = self.continue_head(post.to(self.continue_head.weight.dtype)).squeeze(-1).float()
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            terms["wm_continue"] = args.wm_continue_coef * masked_mean(bce, mask)
        # critic: imagined lambda-returns as extra targets, and the slow-critic regulariser, on the real states
        states = h[:, C - 1 : -1]  # state before response token j
        critic_features = self.trunk.norm(states, frozen=self.repr_scale == 0)
        if args.wm_imagination_horizon > 0 and args.wm_imagination_coef > 0:
            target = self.imagine(hidden, input_ids, value_head, columns=range(C - 1, hidden.size(1) - 1))
            stats["wm/imagined_return"] = masked_mean(target, mask)
            terms["wm_imagination"] = (
                args.vf_coef
                * args.wm_imagination_coef
                * masked_mean(critic_loss(value_head, critic_features, target), mask)
            )
        if self.slow_critic is not None:
            with torch.no_grad():
                slow_values = self.slow_critic(critic_features.detach())
            terms["wm_slow_critic"] = (
                args.vf_coef
                * args.wm_slow_critic_coef
                * masked_mean(critic_loss(value_head, critic_features, slow_values), mask)
            )
        return terms, stats

    def _dynamics_losses(self, hidden, h, input_ids, attn, C, real_logits, stats) -> dict[str, torch.Tensor]:
        """K-step unroll of the prior on the real tokens: h^_{t+i} = f(h^_{t+i-1}, emb(x_{t+i})), h^_t = h_t, scored
        against the posterior h_{t+i} at every position t >= C - 1 (the last prompt token onwards) with t + i real."""
        args = self.args
        K, L = args.wm_unroll_steps, hidden.size(1)
        layer_kwargs = self.trunk.layer_call_kwargs() if self.dynamics_kind == "sequential" else None
        columns = torch.arange(L, device=hidden.device)
        latent_sum, kl_sum = 0.0, 0.0
        prev = h
        for i in range(1, K + 1):
            if i >= L:
                break
            tokens = shift_tokens(input_ids, i, self.trunk.pad_token_id)  # tokens[:, t] = x_{t+i}
            prev = self.prior_step(i, prev, tokens, layer_kwargs)  # full length: the chain attends over positions
            pred = prev[:, : L - i]  # h^_{t+i} at position t (the last i positions have no posterior)
            target = h[:, i:]  # posterior h_{t+i}; stop-gradient inside the losses
            valid = (columns[: L - i] >= C - 1).unsqueeze(0) & attn[:, i:]
            if args.wm_latent_loss != "none":
                latent_sum = latent_sum + masked_mean(latent_distance(pred, target, args.wm_latent_loss), valid)
            with torch.no_grad():
                cos = F.cosine_similarity(pred.float(), hidden[:, i:].float(), dim=-1)
                stats[f"wm/latent_cos_depth_{i}"] = masked_mean(cos, valid)
            kl = token_kl(real_logits[:, i:], self.prior_logits(i, pred))  # per position
            stats[f"wm/token_kl_depth_{i}"] = masked_mean(kl.detach(), valid)
            if args.wm_token_kl_coef > 0:
                kl_sum = kl_sum + masked_mean(free_bits(kl, args.wm_token_kl_free_bits), valid)
        terms = {}
        if args.wm_latent_loss != "none":
            terms["wm_latent"] = args.wm_latent_coef * latent_sum / K
        if args.wm_token_kl_coef > 0:
            terms["wm_token_kl"] = args.wm_token_kl_coef * kl_sum / K
        return terms

    # -- imagination ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def imagine(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        value_head: nn.Module,
        columns=None,
        return_trajectory: bool = False,
    ):
        """From each real prefix ending at a column t of `columns` (default: every column), an independent rollout of
        the prior for H steps, with tokens sampled from the policy at h_t and from the heads' logits of the predicted
        latents after it; the lambda-return R_0 [B, len(columns)] is a critic target at h_t. No gradient anywhere
        (decorated `no_grad`), so no policy gradient on imagined tokens.
            a_0 ~ pi(.|h_t) / T,  h^_{k+1} = f(h^_k, emb(a_k)),  r_k = R(h^_{k+1}),  c_k = C(h^_{k+1}),  v_k = V(h^_k)
        With `return_trajectory`, also the tokens a_0..a_H [B, len(columns), H + 1].
        (DreamerV3, section 3 "Critic learning": imagined trajectories, lambda-returns eq. 7)"""
        columns = torch.arange(input_ids.size(1)) if columns is None else torch.as_tensor(columns)
        with capture_preserved(self.trunk):
            return self._imagine(hidden, input_ids, value_head, columns.to(input_ids.device), return_trajectory)

    def _imagine(self, hidden, input_ids, value_head, columns, return_trajectory):
        args = self.args
        H, T = args.wm_imagination_horizon, args.temperature
        generator = self._imagination_generator(hidden.device)
        h = hidden.detach()
        start = h[:, columns]  # h_t of each rollout, [B, S, d]
        tokens = sample_tokens(self.trunk.logits(start, frozen=True) / T, generator)  # a_0
        values, rewards, continues, trajectory = [value_head(self.features(start)).float()], [], [], [tokens]
        rollouts = PrefixRollouts(self, h, input_ids, columns, H)
        for k in range(1, H + 1):
            latent = rollouts.step(k, tokens)  # h^_{t+k}, [B, S, d]
            features = self.features(latent)
            rewards.append(self.reward_head(features))
            continue_logits = self.continue_head(features.to(self.continue_head.weight.dtype)).squeeze(-1)
            continues.append(torch.sigmoid(continue_logits.float()))
            values.append(value_head(features).float())
            tokens = sample_tokens(self.prior_logits(k, latent) / T, generator)
            trajectory.append(tokens)
        B, S = start.shape[:2]
        flat = lambda xs: torch.stack(xs, dim=-1).reshape(B * S, -1)  # noqa: E731
        returns = lambda_returns(flat(rewards), flat(continues), flat(values), args.gamma, args.wm_imagination_lambda)
        start_return = returns[:, 0].view(B, S)
        if return_trajectory:
            return start_return, torch.stack(trajectory, dim=-1)
        return start_return

    def _imagination_generator(self, device) -> torch.Generator:
        """Imagination's own sampler, seeded from (seed, process, call count): it never draws from the global random
        stream, so switching imagination on or off (or changing its horizon) leaves PPO's sampling and shuffling
        exactly as they were."""
        calls = int(self.imagination_calls)
        self.imagination_calls += 1
        process = getattr(self.args, "process_index", 0)
        seed = ((self.args.seed * 1_000_003 + process) * 1_000_033 + calls) % (2**63)
        return torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def update_slow_critic(self, value_head: nn.Module) -> None:
        """theta_slow <- decay theta_slow + (1 - decay) theta, after each optimizer step.  (DreamerV3: slow critic,
        EMA decay 0.98)"""
        if self.slow_critic is None:
            return
        decay = self.args.wm_slow_critic_decay
        for slow, fast in zip(self.slow_critic.parameters(), value_head.parameters()):
            slow.mul_(decay).add_(fast.detach(), alpha=1 - decay)


class PrefixRollouts:
    """Independent imagined rollouts of the prior, one per row b and start column t of a batch: `step(k, a_{k-1})`
    gives h^_{t+k} [B, S, d] for every rollout, each computed from its own prefix and its own imagined tokens only.

    The MLP prior is Markov: a rollout is its latent. The sequential prior's blocks attend over positions, so running
    them on [B, L] at once would let the rollout from t read the imagined tokens of the rollouts from t' < t. Instead
    rollout (b, t) is a copy of row b continued by its own tokens, y = (x_0..x_t, a_0, a_1, ...), and step k runs depth
    k over it: position t' reads y_{t'+k} (real while t' + k <= t, imagined after) and its own depth k - 1 latent,
    exactly the chain the heads compute teacher-forced on that continuation (and what drafting computes with drafts).
    Positions after t are computed and never read (causal attention). Cost: one block call on [B * S, L] per step."""

    def __init__(
        self,
        world_model: WorldModel,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        columns: torch.Tensor,
        horizon: int,
    ):
        self.world_model, self.columns = world_model, columns
        B, self.length = input_ids.shape
        S = columns.numel()
        self.rollout = torch.arange(S, device=columns.device)
        if world_model.dynamics_kind != "sequential":
            self.latent = hidden[:, columns]  # [B, S, d]
            return
        self.layer_kwargs = repeat_rows(world_model.trunk.layer_call_kwargs(), B, S)
        pad = world_model.trunk.pad_token_id
        # [B, S, L + H]: rollout (b, t) = row b; its tokens after t are overwritten by its own a_0, a_1, ...
        self.tokens = F.pad(input_ids, (0, horizon), value=pad).unsqueeze(1).repeat(1, S, 1)
        self.latent = hidden.repeat_interleave(S, dim=0)  # depth-0 chain of every rollout: the trunk's h, [B * S, L, d]

    def step(self, k: int, tokens: torch.Tensor) -> torch.Tensor:
        """h^_{t+k} [B, S, d] from a_{k-1} [B, S] (the tokens imagined at the previous step)."""
        wm = self.world_model
        if wm.dynamics_kind != "sequential":
            self.latent = wm.prior_step(k, self.latent, tokens, None)
            return self.latent
        B, S, L = *self.tokens.shape[:2], self.length
        self.tokens[:, self.rollout, self.columns + k] = tokens  # y_{t+k} = a_{k-1}
        shifted = self.tokens[..., k : k + L].reshape(B * S, L)  # depth k at position t' reads y_{t'+k}
        self.latent = wm.prior_step(k, self.latent, shifted, self.layer_kwargs)
        return self.latent.view(B, S, L, -1)[:, self.rollout, self.columns]


def repeat_rows(value, batch: int, times: int):
    """Every batch-first tensor in `value` (a layer's call kwargs: masks, rotary embeddings, position ids; nested in
    tuples and dicts) with each row repeated `times` times (row b -> rows b * times .. b * times + times - 1), as
    `repeat_interleave` lays out a batch; tensors without a batch axis of size `batch` are kept (they broadcast)."""
    if isinstance(value, torch.Tensor):
        return value.repeat_interleave(times, dim=0) if value.dim() >= 2 and value.size(0) == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(repeat_rows(v, batch, times) for v in value)
    if isinstance(value, dict):
        return {k: repeat_rows(v, batch, times) for k, v in value.items()}
    return value


@contextlib.contextmanager
def capture_preserved(trunk):
    """Keep the trunk's capture (`hidden`, last-layer inputs) of the update's forward: calling the final norm (the
    critic's features, logits of latents) fires its capture hook, which would overwrite it."""
    saved = (trunk.hidden, trunk.layer_args, trunk.layer_kwargs)
    try:
        yield
    finally:
        trunk.hidden, trunk.layer_args, trunk.layer_kwargs = saved


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per position from softmax(logits): [..., V] -> [...]."""
    probs = F.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, generator=generator).view(probs.shape[:-1])


def resolve_dynamics(args) -> str:
    """`wm_dynamics="auto"`: the sequential MTP heads' chain when `head_type="sequential"`, else the MLP prior."""
    kind = args.wm_dynamics
    if kind == "auto":
        return "sequential" if args.head_type == "sequential" else "mlp"
    if kind == "sequential" and args.head_type != "sequential":
        raise ValueError("wm_dynamics='sequential' needs head_type='sequential' (or use 'mlp' / 'auto')")
    return kind


__all__ = [
    "MLPDynamics",
    "PercentileNormalizer",
    "PrefixRollouts",
    "TwoHotHead",
    "TwoHotValueHead",
    "WorldModel",
    "capture_preserved",
    "critic_loss",
    "latent_distance",
    "repeat_rows",
    "sample_tokens",
    "scale_gradient",
    "token_kl",
]
