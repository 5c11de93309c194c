"""`MTPConfig`: what the multi-token prediction (MTP) heads are and how their loss is formed.

Depth convention (used everywhere in trl-mtp): the main LM head at position t predicts token t+1; MTP depth
i = 1..D predicts token t+1+i. `num_mtp_heads` is D, so one position sees a window of D+1 tokens
(DeepSeek's D; Meta's n = D+1; Stern's k = D+1).

Schedules (lambda schedule, window curriculum, every-n-steps) live with the trainers, not here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# the head families, the one list every other part reads (heads.HEAD_FAMILIES, the drafters, benchmarks, tests)
HEAD_TYPES = ("blockwise", "parallel", "sequential", "medusa")
MODES = ("coupled", "decoupled")
DECOUPLED_TARGETS = ("tokens", "self_distill")


# the fields that say how the heads are trained, not what they are: a run sets them, whatever heads it starts from
LOSS_FIELDS = (
    "mode",
    "decoupled_target",
    "self_distill_topk",
    "mtp_lambda",
    "mtp_depth_decay",
    "mtp_normalize_depth_weights",
    "mtp_loss_chunk_size",
)


@dataclass
class MTPConfig:
    r"""
    Configuration of the MTP heads and of their loss.

    Parameters:
        head_type (`str`, defaults to `"blockwise"`):
            Head family: `"blockwise"` (Stern et al. 2018: z_i = h + W2_i act(W1 h), W1 shared),
            `"parallel"` (Gloeckle et al. 2024: one decoder layer of the base's class per depth over the trunk's
            hidden sequence), `"sequential"` (DeepSeek-V3: h_i = Block_i(eh_proj[enorm(emb(x_{t+i})); hnorm(h_{i-1})]),
            a causal chain over depths) or `"medusa"` (Cai et al. 2024: z_i = h + SiLU(W_i h), W_i zero-init).
        num_mtp_heads (`int`, defaults to `2`):
            D, the number of extra tokens predicted beyond the next one. Depth i predicts token t+1+i.
        mode (`str`, defaults to `"coupled"`):
            `"coupled"`: the MTP loss trains the trunk too (densified signal). `"decoupled"`: the trunk hidden state,
            the embeddings, the final norm and the LM head are detached; only head parameters get gradients.
        decoupled_target (`str`, defaults to `"tokens"`):
            Target of the heads in decoupled mode: `"tokens"` (hard cross-entropy on the data tokens) or
            `"self_distill"` (soft cross-entropy against the model's own detached next-token distribution at
            position t+i, i.e. what the policy itself would predict for token t+1+i). Ignored in coupled mode.
        self_distill_topk (`int` or `None`, defaults to `None`):
            With `"self_distill"`, keep only the teacher's top-k tokens (renormalised). `None`: full vocabulary.
        mtp_lambda (`float`, defaults to `0.3`):
            Weight of the MTP loss in `MTPForCausalLM.forward`: loss = L_main + mtp_lambda * sum_i w_i CE_i.
            Trainers with a lambda schedule apply their own lambda to `compute_mtp_loss(...).loss`.
        mtp_depth_decay (`float`, defaults to `1.0`):
            beta in the per-depth weight w_i proportional to beta^(i-1). 1.0 weighs all depths equally.
        mtp_normalize_depth_weights (`bool`, defaults to `True`):
            Divide the weights by their sum over the depths trained, so sum_i w_i = 1 (with beta = 1 this is
            DeepSeek-V3's 1/D average). `False` keeps w_i = beta^(i-1) (with beta = 1, Meta's plain sum).
        mtp_loss_chunk_size (`int`, defaults to `256`):
            Token positions per checkpointed (final norm -> LM head -> loss) chunk. Only one chunk's full-vocabulary
            logits exist at a time, in forward and backward. 0 computes each depth in one chunk.
        blockwise_hidden_mult (`int`, defaults to `4`):
            Blockwise: width multiplier m of the shared projection W1 (d -> m*d).
        share_lm_head (`bool`, defaults to `True`):
            Medusa: reuse the base LM head (`True`) or give each depth its own copy of it (`False`).
        parallel_init_from_last_layer (`bool`, defaults to `True`):
            Parallel: initialise each depth's decoder layer as a copy of the trunk's last layer (`True`) or with the
            base model's own weight initialisation (`False`).
        sequential_init_from_last_layer (`bool`, defaults to `True`):
            Sequential: same choice for each depth's `mtp_block`.
    """

    head_type: str = "blockwise"
    num_mtp_heads: int = 2
    mode: str = "coupled"
    decoupled_target: str = "tokens"
    self_distill_topk: int | None = None
    mtp_lambda: float = 0.3
    mtp_depth_decay: float = 1.0
    mtp_normalize_depth_weights: bool = True
    mtp_loss_chunk_size: int = 256
    blockwise_hidden_mult: int = 4
    share_lm_head: bool = True
    parallel_init_from_last_layer: bool = True
    sequential_init_from_last_layer: bool = True

    def __post_init__(self):
        def bad(field: str, value, why: str):
            raise ValueError(f"MTPConfig.{field}={value!r}: {why}")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if self.head_type not in HEAD_TYPES:
            bad("head_type", self.head_type, f"choose from {', '.join(HEAD_TYPES)}")
        if not is_int(self.num_mtp_heads) or self.num_mtp_heads < 1:
            bad("num_mtp_heads", self.num_mtp_heads, "must be an integer >= 1")
        if self.mode not in MODES:
            bad("mode", self.mode, f"choose from {', '.join(MODES)}")
        if self.decoupled_target not in DECOUPLED_TARGETS:
            bad("decoupled_target", self.decoupled_target, f"choose from {', '.join(DECOUPLED_TARGETS)}")
        if self.self_distill_topk is not None and (not is_int(self.self_distill_topk) or self.self_distill_topk < 1):
            bad("self_distill_topk", self.self_distill_topk, "must be None or an integer >= 1")
        if not is_number(self.mtp_lambda) or self.mtp_lambda < 0:
            bad("mtp_lambda", self.mtp_lambda, "must be a finite number >= 0")
        if not is_number(self.mtp_depth_decay) or self.mtp_depth_decay <= 0:
            bad("mtp_depth_decay", self.mtp_depth_decay, "must be a finite number > 0")
        if not isinstance(self.mtp_normalize_depth_weights, bool):
            bad("mtp_normalize_depth_weights", self.mtp_normalize_depth_weights, "must be a bool")
        if not is_int(self.mtp_loss_chunk_size) or self.mtp_loss_chunk_size < 0:
            bad("mtp_loss_chunk_size", self.mtp_loss_chunk_size, "must be an integer >= 0 (0: no chunking)")
        if not is_int(self.blockwise_hidden_mult) or self.blockwise_hidden_mult < 1:
            bad("blockwise_hidden_mult", self.blockwise_hidden_mult, "must be an integer >= 1")
        for field in ("share_lm_head", "parallel_init_from_last_layer", "sequential_init_from_last_layer"):
            if not isinstance(getattr(self, field), bool):
                bad(field, getattr(self, field), "must be a bool")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_loss_of(self, other: MTPConfig) -> MTPConfig:
        """These heads (the architecture fields) trained with `other`'s loss fields: how a run that starts from
        trained heads takes its own mode, targets and weights (an SFT checkpoint's `mode="coupled"` must not leak
        into a decoupled RL run)."""
        return dataclasses.replace(self, **{name: getattr(other, name) for name in LOSS_FIELDS})

    @classmethod
    def from_dict(cls, data: dict) -> MTPConfig:
        """Build from a dict; unknown keys are an error (a typo should not silently fall back to a default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"MTPConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**data)
