"""A latent world model inside PPO, from the Dreamer family, riding on the policy's own hidden states.

The seed's duality: in text the state is the prefix, s_t = (a_1..a_{t-1}), so predicting the next tokens is predicting
the next states, s_{t+i} = s_t o (a_t..a_{t+i-1}). Here

    state      h_t         the trunk's pre-norm last hidden state at position t (the posterior: the real h_{t+1} is
                           what the trunk computes once token a_t is appended)
    action     a_t         the token sampled at position t (response token j sits at column C + j)
    prior      h^_{t+1} = f(h_t, emb(a_t))   the sequential MTP head's chain (DeepSeek-V3: depth i at position t reads
                           emb(x_{t+i}) and h^_{t+i-1}, so its latent is exactly a prediction of h_{t+i}), or a small MLP

Parts (each a `PPOConfig` switch, `wm_*` fields, so that each can be ablated):

1. latent dynamics: K-step unroll of the prior on real tokens; cosine (or MSE) to stop-gradient posteriors, plus the KL
   between the token distributions of predicted and real latents (NextLat); free bits; optional discrete 32x32 latent
   with KL balancing and 1% unimix (DreamerV3).
2. reward and continue (EOS) heads on latents; symlog two-hot critic (255 bins, zero-initialised output) with the EMA
   slow-critic regulariser (DreamerV3).
3. imagination: from every real prefix, roll the prior H steps with head-sampled tokens; lambda-returns from the
   reward / continue / value heads become extra critic targets. All of it runs without gradient: imagined tokens never
   receive a policy-gradient step.
4. return normalisation: advantages / max(1, EMA(P95) - EMA(P5)) instead of whitening (DreamerV3).

Gradient routing: `decoupled` (default) reads a detached trunk, so the policy is driven by the PPO loss alone (the critic
is part of PPO and learns as before); `coupled` lets the world-model losses into the trunk scaled by `wm_repr_coef`.

References: DreamerV3 = Hafner et al. 2023, "Mastering Diverse Domains through World Models" (arXiv:2301.04104);
NextLat = Teoh et al. 2025, "Next-Latent Prediction Transformers Learn Compact World Models"; DeepSeek-V3 = DeepSeek-AI
2024 (arXiv:2412.19437), section 2.2 MTP modules; GAE / lambda-returns = Schulman et al. 2016, Sutton & Barto ch. 12.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from trl_mtp.heads.base import shift_tokens

# == 1. symlog and two-hot (DreamerV3) ===============================================================================


def symlog(x: torch.Tensor) -> torch.Tensor:
    """symlog(x) = sign(x) ln(|x| + 1).  (DreamerV3, eq. 9)"""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """symexp(x) = sign(x) (exp(|x|) - 1), the inverse of symlog.  (DreamerV3, eq. 9)"""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(num_bins: int = 255, low: float = -20.0, high: float = 20.0) -> torch.Tensor:
    """B = linspace(-20, 20, 255): bin centres in symlog space.  (DreamerV3, eq. 10 and appendix B)"""
    return torch.linspace(low, high, num_bins)


def twohot_encode(y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """twohot(y)_i = |b_{k+1} - y| / |b_{k+1} - b_k| if i = k, |b_k - y| / |b_{k+1} - b_k| if i = k + 1, else 0,
    with k the bin just below y (y clamped to the bin range): [...] -> [..., num_bins].  (DreamerV3, eq. 11)"""
    y = y.clamp(bins[0], bins[-1])
    k = (torch.bucketize(y, bins, right=True) - 1).clamp(0, len(bins) - 2)
    low, high = bins[k], bins[k + 1]
    w_high = ((y - low) / (high - low)).clamp(0, 1)
    out = torch.zeros(*y.shape, len(bins), dtype=y.dtype, device=y.device)
    out.scatter_(-1, k.unsqueeze(-1), (1 - w_high).unsqueeze(-1))
    out.scatter_add_(-1, (k + 1).unsqueeze(-1), w_high.unsqueeze(-1))
    return out


def twohot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """y_hat = symexp(softmax(logits)^T B): [..., num_bins] -> [...].  (DreamerV3, eq. 10)"""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return symexp(F.softmax(logits, dim=-1) @ bins.to(logits.dtype))


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """L = -twohot(symlog(y))^T log softmax(logits), per element: [..., num_bins], [...] -> [...].
    (DreamerV3, eq. 11: categorical cross-entropy on the two-hot symlog target)"""
    return -(twohot_encode(symlog(target.float()), bins) * F.log_softmax(logits.float(), dim=-1)).sum(-1)


# == 2. lambda-returns, return normalisation =========================================================================


def lambda_returns(rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> torch.Tensor:
    """Bootstrapped lambda-returns of an imagined trajectory of H steps, right to left:
        R_H = v_H;   R_k = r_k + gamma c_k ((1 - lam) v_{k+1} + lam R_{k+1})
    `rewards`, `continues`: [N, H] (r_k, c_k of the transition from latent k to k + 1); `values`: [N, H + 1] (v_0 at the
    real start state, v_k = V(latent k)). Returns [N, H]: R_0..R_{H-1} (R_0 is the critic's target at the real state).
    (DreamerV3, eq. 7; TD(lambda), Sutton & Barto 2018, eq. 12.3)"""
    H = rewards.size(1)
    if values.size(1) != H + 1:
        raise ValueError(f"values need H + 1 = {H + 1} columns, got {values.size(1)}")
    returns = torch.zeros_like(rewards)
    next_return = values[:, H]
    for k in reversed(range(H)):
        next_return = rewards[:, k] + gamma * continues[:, k] * ((1 - lam) * values[:, k + 1] + lam * next_return)
        returns[:, k] = next_return
    return returns


class PercentileNormalizer(nn.Module):
    """S = EMA(P95(R)) - EMA(P5(R)) over batches of returns; advantages are divided by max(1, S) (large returns scaled
    down, small ones never scaled up), decay 0.99.  (DreamerV3, eq. 6-8, "return normalization")
    The EMAs start at 0, as in DreamerV3's `Moments`; state is in buffers, saved with the world model."""

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95, limit: float = 1.0):
        super().__init__()
        self.decay, self.q_low, self.q_high, self.limit = decay, low, high, limit
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> torch.Tensor:
        """Update the EMAs with the percentiles of `returns` (a flat tensor of real-token returns); the new scale."""
        x = returns.detach().float().flatten()
        self.low.mul_(self.decay).add_((1 - self.decay) * torch.quantile(x, self.q_low))
        self.high.mul_(self.decay).add_((1 - self.decay) * torch.quantile(x, self.q_high))
        return self.scale()

    def scale(self) -> torch.Tensor:
        """max(1, EMA(P95) - EMA(P5))."""
        return torch.clamp(self.high - self.low, min=self.limit)


# == 3. latent losses ================================================================================================


def free_bits(kl: torch.Tensor, bits: float) -> torch.Tensor:
    """max(bits, KL): no gradient once a term is below `bits` nats, so it stops squeezing the latents.
    (DreamerV3, eq. 5; Kingma et al. 2016)"""
    return torch.clamp(kl, min=bits) if bits > 0 else kl


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


def unimix_log_probs(logits: torch.Tensor, mix: float = 0.01) -> torch.Tensor:
    """log((1 - mix) softmax(logits) + mix / K) over the last axis: every class keeps some probability, so KLs stay
    finite.  (DreamerV3, appendix "unimix categoricals", 1%)"""
    probs = F.softmax(logits.float(), dim=-1)
    if mix > 0:
        probs = (1 - mix) * probs + mix / logits.size(-1)
    return torch.log(probs)


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of [..., G, K] independent categoricals, summed over the G groups and K classes -> [...]."""
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


def kl_balanced_loss(post_logits: torch.Tensor, prior_logits: torch.Tensor, dyn: float = 0.5, rep: float = 0.1,
                     free: float = 1.0, mix: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """KL balancing of a discrete [..., G, K] latent, per position:
        L_dyn = max(free, KL[sg(q) || p]),  L_rep = max(free, KL[q || sg(p)]),  L = dyn L_dyn + rep L_rep
    (q the posterior from the real latent, p the prior from the predicted one, both with unimix): the dynamics term
    moves only the prior, the representation term only the posterior.  (DreamerV3, eq. 5, beta_dyn 0.5, beta_rep 0.1)
    Returns (loss, KL[q || p] detached)."""
    log_q, log_p = unimix_log_probs(post_logits, mix), unimix_log_probs(prior_logits, mix)
    dyn_loss = free_bits(categorical_kl(log_q.detach(), log_p), free)
    rep_loss = free_bits(categorical_kl(log_q, log_p.detach()), free)
    return dyn * dyn_loss + rep * rep_loss, categorical_kl(log_q, log_p).detach()


# == 4. modules ======================================================================================================


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
    """A symlog two-hot regression head: MLP -> 255 logits, output layer zero-initialised (uniform over the symmetric
    bins, so the first prediction is exactly 0).  (DreamerV3: reward and critic heads, zero-init output layer)"""

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
        """Decoded prediction y_hat = symexp(softmax(logits)^T B), [..., d] -> [...]."""
        return twohot_decode(self.logits(features), self.bins)

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return twohot_loss(self.logits(features), target, self.bins)


class TwoHotValueHead(TwoHotHead):
    """The critic as a symlog two-hot head on the policy's hidden state (a drop-in for `ValueHead`: forward returns
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
    """The world model's own parameters (MLP prior, discrete encoders, reward / continue heads, the slow critic) and
    its losses and imagination. The prior may be the policy's sequential MTP heads, which it does not own."""

    def __init__(self, trunk, heads, args, value_head: nn.Module | None):
        super().__init__()
        self.trunk = trunk  # plain objects: the policy's modules are registered (and saved) by the policy
        self.args = args
        d = trunk.model.config.get_text_config().hidden_size
        self.dynamics_kind = resolve_dynamics(args)
        object.__setattr__(self, "_heads", heads)  # not a submodule: the heads belong to the policy
        self.dynamics = MLPDynamics(d) if self.dynamics_kind == "mlp" else None
        self.groups, self.classes = args.wm_latent_groups, args.wm_latent_classes
        if args.wm_discrete_latent:
            # q(z | h_{t+i}) and p(z | h^_{t+i}): 32 categoricals of 32 classes each  (DreamerV3, eq. 2)
            self.posterior_encoder = nn.Linear(d, self.groups * self.classes)
            self.prior_encoder = nn.Linear(d, self.groups * self.classes)
        self.reward_head = TwoHotHead(d, args.wm_num_bins) if args.wm_reward_head else None
        self.continue_head = nn.Linear(d, 1) if args.wm_continue_head else None
        if args.wm_slow_critic_coef > 0 and value_head is not None:
            # EMA copy of the critic head, never optimised  (DreamerV3: "critic regularised toward its EMA")
            self.slow_critic = copy.deepcopy(value_head).requires_grad_(False)
        else:
            self.slow_critic = None

    @property
    def heads(self):
        return self._heads

    @property
    def repr_scale(self) -> float:
        """Gradient scale of the trunk states the world model reads: 0 decoupled, `wm_repr_coef` coupled."""
        return self.args.wm_repr_coef if self.args.wm_gradient == "coupled" else 0.0

    # -- the prior ------------------------------------------------------------------------------------------------
    def prior_step(self, step: int, prev: torch.Tensor, tokens: torch.Tensor, layer_kwargs: dict | None) -> torch.Tensor:
        """h^_{t+step} = f(h^_{t+step-1}, emb(a_{t+step-1})) at every position t: the sequential head's depth `step`
        (depths beyond D reuse the last depth's block), or the MLP prior.  (DeepSeek-V3 MTP module, eq. 21-22)"""
        frozen = self.repr_scale == 0  # the embeddings are the policy's
        if self.dynamics_kind == "sequential":
            depth = min(step, self.heads.num_depths)
            module = self.heads.layers[depth - 1]
            from trl_mtp.heads.trunk import call_layer

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

    # -- training losses ------------------------------------------------------------------------------------------
    def losses(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
               real_logits: torch.Tensor, rewards: torch.Tensor, response_mask: torch.Tensor,
               value_head: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """World-model loss terms of one micro-batch, from the trunk states of the update's own forward.

        `hidden` [B, L, d] (graph attached), `real_logits` [B, L, V] (the policy's logits, read detached),
        `rewards`/`response_mask` [B, R] (per-token rewards of the rollouts). Returns (terms, stats)."""
        with capture_preserved(self.trunk):
            return self._losses(hidden, input_ids, attention_mask, context_length, real_logits, rewards,
                                response_mask, value_head)

    def _losses(self, hidden, input_ids, attention_mask, context_length, real_logits, rewards, response_mask,
                value_head):
        args, C = self.args, context_length
        terms, stats = {}, {}
        h = scale_gradient(hidden, self.repr_scale)
        attn = attention_mask.bool()
        if args.wm_latent_loss != "none" or args.wm_token_kl_coef > 0 or args.wm_discrete_latent:
            terms.update(self._dynamics_losses(hidden, h, input_ids, attn, C, real_logits, stats))
        # reward and continue heads on the posterior states h_{t+1} = h at column C + j (after response token j)
        post = self.features(h[:, C:])
        mask = response_mask
        if self.reward_head is not None:
            per_token = self.reward_head.loss(post, rewards)  # two-hot symlog  (DreamerV3, eq. 11)
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
            target = self.imagine(hidden, input_ids, value_head)[:, C - 1 : -1]
            stats["wm/imagined_return"] = masked_mean(target, mask)
            terms["wm_imagination"] = args.vf_coef * args.wm_imagination_coef * masked_mean(
                critic_loss(value_head, critic_features, target), mask)
        if self.slow_critic is not None:
            with torch.no_grad():
                slow_values = self.slow_critic(critic_features.detach())
            terms["wm_slow_critic"] = args.vf_coef * args.wm_slow_critic_coef * masked_mean(
                critic_loss(value_head, critic_features, slow_values), mask)
        return terms, stats

    def _dynamics_losses(self, hidden, h, input_ids, attn, C, real_logits, stats) -> dict[str, torch.Tensor]:
        """K-step unroll of the prior on the real tokens: h^_{t+i} = f(h^_{t+i-1}, emb(x_{t+i})), h^_t = h_t, scored
        against the posterior h_{t+i} at every position t >= C - 1 (the last prompt token onwards) with t + i real."""
        args = self.args
        K, L = args.wm_unroll_steps, hidden.size(1)
        layer_kwargs = self.trunk.layer_call_kwargs() if self.dynamics_kind == "sequential" else None
        columns = torch.arange(L, device=hidden.device)
        latent_sum, kl_sum, discrete_sum = 0.0, 0.0, 0.0
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
            if args.wm_discrete_latent:
                shape = (*pred.shape[:-1], self.groups, self.classes)
                post_logits = self.posterior_encoder(self.features(target)).view(shape)
                prior_logits = self.prior_encoder(self.features(pred)).view(shape)
                loss, kl_z = kl_balanced_loss(post_logits, prior_logits, args.wm_kl_dyn, args.wm_kl_rep,
                                              args.wm_free_bits, args.wm_unimix)
                discrete_sum = discrete_sum + masked_mean(loss, valid)
                stats[f"wm/latent_kl_depth_{i}"] = masked_mean(kl_z, valid)
        terms = {}
        if args.wm_latent_loss != "none":
            terms["wm_latent"] = args.wm_latent_coef * latent_sum / K
        if args.wm_token_kl_coef > 0:
            terms["wm_token_kl"] = args.wm_token_kl_coef * kl_sum / K
        if args.wm_discrete_latent:
            terms["wm_discrete_kl"] = discrete_sum / K
        return terms

    # -- imagination ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def imagine(self, hidden: torch.Tensor, input_ids: torch.Tensor, value_head: nn.Module,
                return_trajectory: bool = False):
        """From every real prefix (each position t of the sequence), roll the prior H steps with tokens sampled from
        the policy at h_t and from the heads' logits of the predicted latents after it; the lambda-return R_0 [B, L]
        is a critic target at h_t. No gradient anywhere (decorated `no_grad`), so no policy gradient on imagined tokens.
            a_0 ~ pi(.|h_t) / T,  h^_{k+1} = f(h^_k, emb(a_k)),  r_k = R(h^_{k+1}),  c_k = C(h^_{k+1}),  v_k = V(h^_k)
        (DreamerV3, section 3 "Critic learning": imagined trajectories, lambda-returns eq. 7)"""
        with capture_preserved(self.trunk):
            return self._imagine(hidden, input_ids, value_head, return_trajectory)

    def _imagine(self, hidden, input_ids, value_head, return_trajectory):
        args = self.args
        H, T = args.wm_imagination_horizon, args.temperature
        B, L = input_ids.shape
        layer_kwargs = self.trunk.layer_call_kwargs() if self.dynamics_kind == "sequential" else None
        h = hidden.detach()
        tokens = sample_tokens(self.trunk.logits(h, frozen=True) / T)
        values, rewards, continues, trajectory = [value_head(self.features(h))], [], [], [tokens]
        prev = h
        for k in range(1, H + 1):
            latent = self.prior_step(k, prev, tokens, layer_kwargs)
            features = self.features(latent)
            rewards.append(self.reward_head(features))
            continues.append(torch.sigmoid(self.continue_head(features.to(self.continue_head.weight.dtype)).squeeze(-1).float()))
            values.append(value_head(features).float())
            tokens = sample_tokens(self.prior_logits(k, latent) / T)
            trajectory.append(tokens)
            prev = latent
        flat = lambda xs: torch.stack(xs, dim=-1).reshape(B * L, -1)  # noqa: E731
        returns = lambda_returns(flat(rewards), flat(continues), flat(values), args.gamma, args.wm_imagination_lambda)
        start = returns[:, 0].view(B, L)
        if return_trajectory:
            return start, torch.stack(trajectory, dim=-1)
        return start

    @torch.no_grad()
    def update_slow_critic(self, value_head: nn.Module) -> None:
        """theta_slow <- decay theta_slow + (1 - decay) theta, after each optimizer step.  (DreamerV3: slow critic,
        EMA decay 0.98)"""
        if self.slow_critic is None:
            return
        decay = self.args.wm_slow_critic_decay
        for slow, fast in zip(self.slow_critic.parameters(), value_head.parameters()):
            slow.mul_(decay).add_(fast.detach(), alpha=1 - decay)


@contextlib.contextmanager
def capture_preserved(trunk):
    """Keep the trunk's capture (`hidden`, last-layer inputs) of the update's forward: calling the final norm (the
    critic's features, logits of latents) fires its capture hook, which would overwrite it."""
    saved = (trunk.hidden, trunk.layer_args, trunk.layer_kwargs)
    try:
        yield
    finally:
        trunk.hidden, trunk.layer_args, trunk.layer_kwargs = saved


def sample_tokens(logits: torch.Tensor) -> torch.Tensor:
    """One token per position from softmax(logits): [..., V] -> [...]."""
    probs = F.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs.reshape(-1, probs.size(-1)), 1).view(probs.shape[:-1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def resolve_dynamics(args) -> str:
    """`wm_dynamics="auto"`: the sequential MTP heads' chain when `head_type="sequential"`, else the MLP prior."""
    kind = args.wm_dynamics
    if kind == "auto":
        return "sequential" if args.head_type == "sequential" else "mlp"
    if kind == "sequential" and args.head_type != "sequential":
        raise ValueError("wm_dynamics='sequential' needs head_type='sequential' (or use 'mlp' / 'auto')")
    return kind


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "MLPDynamics", "PercentileNormalizer", "TwoHotHead", "TwoHotValueHead", "WorldModel", "categorical_kl",
    "critic_loss", "free_bits", "kl_balanced_loss", "lambda_returns", "latent_distance", "sample_tokens",
    "capture_preserved", "scale_gradient", "symexp", "symlog", "token_kl", "twohot_bins", "twohot_decode", "twohot_encode", "twohot_loss",
    "unimix_log_probs",
]
