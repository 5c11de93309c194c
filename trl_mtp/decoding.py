"""Self-speculative decoding with the MTP heads: blockwise parallel decoding (Stern et al. 2018), lossless.

Combined scoring and proposal model: ONE forward of the base over [x, d_1 .. d_D] (the last committed token x and
the D drafted tokens) scores the drafts with the main head and, from the same forward's hidden states, the MTP heads
propose the next D drafts. A round is four named stages, each in one place:

    propose   drafts d_1..d_D (and their distributions q_i when sampling) from the heads     `Drafter.propose`
    verify    one base forward over [x, d_1..d_D] with the KV cache: main-head logits p_0..p_D  `verify`
    accept    greedy: keep the longest prefix with d_j = argmax p_{j-1}, then the bonus argmax p_k;
              sampling: keep d_j with probability min(1, p(d_j) / q(d_j)), on the first rejection
              resample from norm(max(0, p - q)); after D acceptances the bonus is drawn from p_D  `accept_greedy` /
                                                                                                  `accept_sampled`
    update    commit k accepted drafts + 1 token per row (EOS and max_new_tokens cut a block), crop the KV cache to
              the longest accepted row, mark the other rows' rejected slots as holes in the 2-D attention mask,
              and let the drafter extend / crop its own caches                                    `update_cache`

so a row gains k + 1 tokens per base forward (k = accepted drafts), and the output is what the base alone produces:
token for token under greedy decoding, in distribution under sampling.

Batches: one shared cache of "slots". A row's slots hold its left padding, its committed tokens and holes (slots of
drafts rejected in that row but kept because another row accepted more); the 2-D mask marks valid slots, and every
forward gets explicit per-row position ids (= the number of valid slots before; GPT-2's learned positions need this).

Head families (see `Drafter`): `blockwise` and `medusa` read only h_t; `parallel` heads are decoder layers over the
hidden sequence with their own KV caches, which mirror the base's slots; `sequential` (DeepSeek-V3) chains depths,
depth i at position t reading h_{i-1} at t and the token x_{t+i} (drafted when not yet known), each with its own cache.

Depth convention: the main head at position t predicts t+1, depth i predicts t+1+i; drafts are [B, D].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from trl_mtp.heads.trunk import _CACHE_ARGS


def left_pad(rows: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows of different lengths as one left-padded batch (generation appends on the right): (ids, mask)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


# ----------------------------------------------------------------------------------------------------------------------
# token choice: the same warping (temperature, top-k, top-p, as `generate` orders them) for p and for q
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Sampler:
    """How tokens are picked: greedy (argmax) or sampling from the warped distribution."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None
    warpers: LogitsProcessorList = field(init=False)

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        self.warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            self.warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(self.top_p))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Warped distribution [..., V] (float32 or better) of logits [..., V]."""
        shape = logits.shape
        flat = logits.reshape(-1, shape[-1]).float() if logits.dtype != torch.float64 else logits.reshape(-1, shape[-1])
        flat = self.warpers(None, flat)
        return torch.softmax(flat, dim=-1).view(shape)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of probs [N, V]."""
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def pick(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token [B], its distribution [B, V] or None when greedy) from logits [B, V]."""
        if not self.do_sample:
            return logits.argmax(-1), None
        probs = self.probs(logits)
        return self.sample(probs), probs


# ----------------------------------------------------------------------------------------------------------------------
# accept: how many drafts each row keeps, and the token that follows them
# ----------------------------------------------------------------------------------------------------------------------
def accept_greedy(logits: torch.Tensor, drafts: torch.Tensor, sampler: Sampler, draft_probs=None):
    """logits [B, D+1, V] at [x, d_1..d_D]; drafts [B, D] -> (accepted k [B], next token [B]).
    d_j is kept while it equals the main head's argmax at the slot before it; the next token is argmax p_k."""
    target = logits.argmax(-1)  # [B, D+1]
    matches = (drafts == target[:, :-1]).long()
    k = matches.cumprod(dim=1).sum(dim=1)  # length of the all-match prefix
    return k, target.gather(1, k[:, None]).squeeze(1)


def accept_sampled(logits: torch.Tensor, drafts: torch.Tensor, sampler: Sampler, draft_probs: torch.Tensor):
    """Speculative rejection sampling (Leviathan et al. 2023; Chen et al. 2023): per row, d_j ~ q_j is kept with
    probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection the token is drawn from norm(max(0, p_j - q_j));
    if all D are kept, the bonus is drawn from p_D. The committed tokens are then distributed exactly as samples of p."""
    p = sampler.probs(logits)  # [B, D+1, V]
    B, D = drafts.shape
    if D == 0:  # the prefill: nothing to verify
        return drafts.new_zeros(B), sampler.sample(p[:, 0])
    p_draft = p[:, :D].gather(2, drafts[..., None]).squeeze(2)  # p_j(d_j)
    q_draft = draft_probs.gather(2, drafts[..., None]).squeeze(2)  # q_j(d_j) > 0: d_j was drawn from q_j
    u = torch.rand(B, D, generator=sampler.generator, dtype=p.dtype, device=p.device)
    keep = (u * q_draft < p_draft).long()  # u < p/q without dividing
    k = keep.cumprod(dim=1).sum(dim=1)
    rows = torch.arange(B, device=p.device)
    p_k = p[rows, k]  # [B, V]: p at the first rejected slot, or p_D after D acceptances
    q_k = torch.cat([draft_probs, torch.zeros_like(p[:, :1])], dim=1)[rows, k]  # q = 0 after D: residual = p_D
    residual = (p_k - q_k).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p_k)  # p == q exactly: nothing rejected, use p
    return k, sampler.sample(residual)


# ----------------------------------------------------------------------------------------------------------------------
# slots, masks and caches
# ----------------------------------------------------------------------------------------------------------------------
def cache_length(cache: DynamicCache) -> int:
    """Slots held by the cache (its longest layer: a head's cache only fills the copied layer's index)."""
    return max((layer.get_seq_length() for layer in cache.layers), default=0)


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` slots (transformers 5's `crop` takes the number of slots to remove, negated)."""
    extra = cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)


def slot_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] position id of each valid slot (valid slots before it), -1 on padding and holes."""
    return torch.where(mask.bool(), mask.long().cumsum(1) - 1, -1)


def window_attention_mask(mask: torch.Tensor, start: int, attn_implementation: str, dtype: torch.dtype):
    """4-D mask [B, 1, S - start, S] for queries at slots start..S-1 over keys 0..S-1: causal and valid keys only.
    Every query may see itself, so padding and hole queries (whose outputs nobody reads) never get an empty row."""
    S = mask.size(1)
    q = torch.arange(start, S, device=mask.device)[:, None]
    kv = torch.arange(S, device=mask.device)[None, :]
    allowed = ((kv <= q)[None] & mask.bool()[:, None, :]) | (kv == q)[None]
    allowed = allowed[:, None]
    if attn_implementation == "eager":  # eager attention adds the mask to the scores
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
    if attn_implementation != "sdpa":
        raise NotImplementedError(f"sequential drafting supports sdpa and eager attention, not {attn_implementation!r}")
    return allowed


def _with_cache(layer_kwargs: dict, cache: DynamicCache, names) -> dict:
    """A copy of a layer's call kwargs that reads from and writes to `cache`."""
    kwargs = dict(layer_kwargs)
    for name in _CACHE_ARGS:
        if name in kwargs or name in names:
            kwargs[name] = cache
    kwargs["use_cache"] = True
    return kwargs


# ----------------------------------------------------------------------------------------------------------------------
# the state of a batch between rounds
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class DecodeState:
    """Everything that persists between rounds.

    `tokens` [B, T + max_new + D + 1]: the left-padded prompt, then each row's committed tokens and, past them,
    scratch room for its drafts; `mask` [B, S] marks the valid cache slots; `n_valid` [B] = valid slots per row = the
    position of the row's next input token (its last committed token, not yet in the cache)."""

    tokens: torch.Tensor
    prompt_len: int
    pad_len: torch.Tensor
    mask: torch.Tensor
    n_valid: torch.Tensor
    generated: torch.Tensor
    done: torch.Tensor
    cache: DynamicCache
    last_slot: torch.Tensor | None = None  # [B] slot of each row's last accepted input (where drafting reads h)

    def column(self, position: torch.Tensor) -> torch.Tensor:
        """Column in `tokens` of each row's token at `position` (positions count a row's tokens, padding excluded)."""
        return self.pad_len.view(-1, *[1] * (position.dim() - 1)) + position


# ----------------------------------------------------------------------------------------------------------------------
# propose: one drafter per head family
# ----------------------------------------------------------------------------------------------------------------------
class Drafter:
    """Turns the verify forward's hidden states into drafts. `observe` runs in the update stage (extend / crop the
    head's own state with the new slots), `propose` in the propose stage."""

    def __init__(self, model, num_depths: int | None = None):
        self.heads = model.heads
        self.trunk = model.trunk
        # drafting with the first `num_depths` heads only (Stern's window k = num_depths + 1): the heads' chain is
        # causal in depth, so the first depths do not depend on the later ones and stay exactly what they were
        self.num_depths = model.heads.num_depths if num_depths is None else num_depths

    def observe(self, state: DecodeState, hidden: torch.Tensor, layer_kwargs: dict, new_start: int, keep: int):
        """hidden [B, n, d]: trunk hidden states of the slots new_start..new_start+n-1 just verified; the cache now keeps
        `keep` slots. `state.last_slot` is each row's last accepted slot."""
        raise NotImplementedError

    def propose(self, state: DecodeState, sampler: Sampler):
        """-> drafts [B, D], and their distributions [B, D, V] when sampling (else None)."""
        raise NotImplementedError

    def _chain(self, logits_of_depth, sampler: Sampler):
        drafts, probs = [], []
        for depth in range(1, self.num_depths + 1):
            token, prob = sampler.pick(logits_of_depth(depth, drafts))
            drafts.append(token)
            probs.append(prob)
        return torch.stack(drafts, 1), (torch.stack(probs, 1) if sampler.do_sample else None)


class PositionwiseDrafter(Drafter):
    """blockwise / medusa: depth i at t is a function of h_t alone."""

    def observe(self, state, hidden, layer_kwargs, new_start, keep):
        rows = torch.arange(hidden.size(0), device=hidden.device)
        self.h = hidden[rows, (state.last_slot - new_start).clamp(min=0)][:, None]  # [B, 1, d]

    def propose(self, state, sampler):
        dummy = torch.zeros(self.h.shape[:2], dtype=torch.long, device=self.h.device)
        logits = [self.heads.depth_logits(i, z)[:, 0]
                  for i, z in self.heads.iter_depth_hiddens(self.h, dummy, num_depths=self.num_depths)]
        return self._chain(lambda depth, drafts: logits[depth - 1], sampler)


class ParallelDrafter(Drafter):
    """parallel: depth i is a decoder layer over the trunk's hidden sequence. Its KV cache mirrors the base's slots:
    each round it runs over the verified slots with the very kwargs the base's last layer got (mask with holes,
    rotary embeddings), then is cropped with the base's cache."""

    def __init__(self, model, num_depths: int | None = None):
        super().__init__(model, num_depths)
        self.caches = [DynamicCache() for _ in range(self.num_depths)]
        self.names = {p.name for p in self.trunk._layer_params}

    def observe(self, state, hidden, layer_kwargs, new_start, keep):
        rows = torch.arange(hidden.size(0), device=hidden.device)
        self.z = []
        for depth, cache in enumerate(self.caches, start=1):
            z = self.heads.depth_hidden(depth, hidden, layer_kwargs=_with_cache(layer_kwargs, cache, self.names))
            crop_cache(cache, keep)
            self.z.append(z[rows, (state.last_slot - new_start).clamp(min=0)][:, None])

    def propose(self, state, sampler):
        return self._chain(lambda depth, drafts: self.heads.depth_logits(depth, self.z[depth - 1])[:, 0], sampler)


class SequentialDrafter(Drafter):
    """sequential (DeepSeek-V3): h_i(t) = Block_i(W_i [enorm(emb(x_{t+i})); hnorm(h_{i-1}(t))]), a causal chain.

    Depth i's cache entry at position t is final once x_{t+i} is committed, i.e. for t <= n - i (n = a row's valid
    slots; its token at position n is committed, not yet in the base's cache). Each round every depth is recomputed
    over a window of slots [start, S): from the first slot any row may still need (position n - D + 1) to the end;
    inside the window a token x_{t+i} not yet known is the draft of an earlier depth at the drafting position n - 1,
    as in training's teacher forcing but with drafts. So the chain needs, per slot, the trunk's hidden state and the
    per-position layer inputs (rotary embeddings, position ids), kept here in buffers aligned with the base's slots."""

    PER_POSITION = ("position_ids", "position_embeddings")

    def __init__(self, model, num_depths: int | None = None):
        super().__init__(model, num_depths)
        self.caches = [DynamicCache() for _ in range(self.num_depths)]
        self.names = {p.name for p in self.trunk._layer_params}
        self.attn_implementation = model.base_model.config._attn_implementation
        self.hidden = None  # [B, S, d] trunk hidden per slot
        self.per_position: dict = {}  # name -> [B, S, ...] tensor or tuple of them
        self.start = 0  # slots before `start` are final in every depth's cache

    @staticmethod
    def _extend(old, new, keep: int):
        """Buffer of per-slot tensors [B, S, ...] (or tuples of them): append the new slots, keep the first `keep`."""
        if isinstance(new, (tuple, list)):
            return tuple(SequentialDrafter._extend(None if old is None else o, n, keep)
                         for o, n in zip(old or [None] * len(new), new))
        full = new if old is None else torch.cat([old, new.expand(old.size(0), *new.shape[1:])], dim=1)
        return full[:, :keep]

    def observe(self, state, hidden, layer_kwargs, new_start, keep):
        self.layer_kwargs = layer_kwargs
        self.hidden = self._extend(self.hidden, hidden, keep)
        for name in self.PER_POSITION:
            if layer_kwargs.get(name) is not None:
                self.per_position[name] = self._extend(self.per_position.get(name), layer_kwargs[name], keep)

    def _window_kwargs(self, state, cache, start):
        S = state.mask.size(1)
        kwargs = _with_cache(self.layer_kwargs, cache, self.names)
        dtype = self.hidden.dtype
        kwargs["attention_mask"] = window_attention_mask(state.mask, start, self.attn_implementation, dtype)
        for name, value in self.per_position.items():
            kwargs[name] = tuple(v[:, start:] for v in value) if isinstance(value, tuple) else value[:, start:]
        if "cache_position" in kwargs or "cache_position" in self.names:
            kwargs["cache_position"] = torch.arange(start, S, device=state.mask.device)
        return kwargs

    def propose(self, state, sampler):
        B, S = state.mask.shape
        start = self.start
        positions = slot_positions(state.mask)[:, start:]  # [B, W]
        rows = torch.arange(B, device=positions.device)
        draft_col = state.column(state.n_valid)  # column of each row's token at position n (its last committed)
        h0 = self.hidden[:, start:]
        prev = h0
        drafts, probs = [], []
        for depth in range(1, self.num_depths + 1):
            # x_{t+depth} for every window slot: committed tokens, or drafts written past them (scratch columns)
            col = (state.column(positions.clamp(min=0)) + depth).clamp(max=state.tokens.size(1) - 1)
            tokens = state.tokens.gather(1, col)
            tokens = torch.where(positions >= 0, tokens, self.trunk.pad_token_id)
            crop_cache(self.caches[depth - 1], start)
            prev = self.heads.depth_hidden(depth, h0, prev_hidden=prev, tokens=tokens,
                                           layer_kwargs=self._window_kwargs(state, self.caches[depth - 1], start))
            logits = self.heads.depth_logits(depth, prev[rows, (state.last_slot - start).clamp(min=0)])
            token, prob = sampler.pick(logits)
            # the next depth reads it as x_{t+depth+1}; a row that finished mid-block may sit past its budget, its
            # drafts are never used: clamp them into the last scratch column, which no output includes
            state.tokens[rows, (draft_col + depth).clamp(max=state.tokens.size(1) - 1)] = token
            drafts.append(token)
            probs.append(prob)
        # entries at positions <= n - D are final for every depth: the next window starts at the first slot past them
        first_open = (slot_positions(state.mask) > (state.n_valid - self.num_depths)[:, None]).float().argmax(1)
        self.start = int(first_open.min())
        return torch.stack(drafts, 1), (torch.stack(probs, 1) if sampler.do_sample else None)


DRAFTERS = {"blockwise": PositionwiseDrafter, "medusa": PositionwiseDrafter,
            "parallel": ParallelDrafter, "sequential": SequentialDrafter}


def make_drafter(model, num_depths: int | None = None) -> Drafter:
    """The drafter of the model's head family, drafting with its first `num_depths` heads (default: all)."""
    return DRAFTERS[model.heads.head_type](model, num_depths)


# ----------------------------------------------------------------------------------------------------------------------
# verify and update
# ----------------------------------------------------------------------------------------------------------------------
def verify(model, state: DecodeState, inputs: torch.Tensor, inputs_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One base forward over `inputs` [B, n] appended to every row's slots (`inputs_mask` marks padding, prefill
    only); -> main-head logits [B, n, V]. Position ids continue each row's count of valid slots (padding gets 1, as
    in `generate`). The trunk hooks keep this forward's hidden states and last-layer kwargs for the drafter."""
    if inputs_mask is None:
        inputs_mask = torch.ones_like(inputs)
    inputs_mask = inputs_mask.long()
    state.mask = torch.cat([state.mask, inputs_mask], dim=1)
    position_ids = (state.n_valid[:, None] + inputs_mask.cumsum(1) - 1).masked_fill(inputs_mask == 0, 1)
    out = model.base_model(input_ids=inputs, attention_mask=state.mask, position_ids=position_ids,
                           past_key_values=state.cache, use_cache=True)
    return out.logits


def update_cache(model, state: DecodeState, drafter: Drafter, new_start: int, n_new: int, k: torch.Tensor,
                 next_token: torch.Tensor, drafts: torch.Tensor, max_new_tokens: int, eos: torch.Tensor | None):
    """Commit each active row's k drafts + next token (cut at EOS or max_new_tokens), crop the cache to the longest
    accepted row, turn the other rows' rejected slots into holes, let the drafter follow. -> tokens committed [B]."""
    B = k.size(0)
    rows = torch.arange(B, device=k.device)
    k = torch.where(state.done, torch.zeros_like(k), k)  # finished rows keep nothing more
    # commit: block = d_1..d_k, next_token
    block = torch.cat([drafts, next_token[:, None]], dim=1)
    block[rows, k] = next_token
    length = torch.minimum(k + 1, max_new_tokens - state.generated)
    offsets = torch.arange(block.size(1), device=k.device)
    in_block = offsets[None] < length[:, None]
    if eos is not None:
        is_eos = torch.isin(block, eos) & in_block
        first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), block.size(1))
        in_block &= offsets[None] <= first_eos[:, None]
        length = in_block.sum(1)
    length = torch.where(state.done, torch.zeros_like(length), length)
    cols = state.prompt_len + state.generated[:, None] + offsets[None]
    write = in_block & ~state.done[:, None]
    state.tokens[rows[:, None].expand_as(cols)[write], cols[write]] = block[write]
    state.generated += length
    finished = state.generated >= max_new_tokens
    if eos is not None:
        finished |= (is_eos & write).any(1)
    # cache: slots new_start .. new_start + n_new - 1 were verified; row r keeps its first (n_new - D) + k_r of them
    # (the prefix before the drafts, then the accepted drafts); the cache keeps the longest row, others get holes
    base = n_new - drafts.size(1)
    kept = torch.where(state.done, 0, base + k)  # a finished row keeps no new slot: its positions stop growing
    keep = new_start + int(kept.max())
    crop_cache(state.cache, keep)
    state.mask = state.mask[:, :keep].clone()
    hole = torch.arange(keep, device=k.device)[None] >= (new_start + kept)[:, None]
    state.mask[hole] = 0
    state.n_valid = state.n_valid + state.mask[:, new_start:].sum(1)  # padding (prefill) and holes are no positions
    state.last_slot = new_start + kept - 1
    # the next input of each row is its last committed token (position n_valid); scratch room holds its drafts
    live = ~state.done  # a finished row's last committed token sits there: leave it
    state.tokens[rows[live], state.column(state.n_valid)[live]] = next_token[live]
    drafter.observe(state, model.trunk.hidden, model.trunk.layer_call_kwargs(), new_start, keep)
    state.done |= finished
    return length, k


# ----------------------------------------------------------------------------------------------------------------------
# acceptance statistics
# ----------------------------------------------------------------------------------------------------------------------
def acceptance_summary(counts: dict) -> dict:
    """Mean accepted length and acceptance by position from a decode's raw `counts` (`speculative_generate`'s
    `stats["counts"]`): every verify round of every active row weighs the same."""
    verify_rounds = counts["verify_rounds"]
    return {"mean_accepted_length": counts["tokens_uncut"] / counts["row_rounds"],
            "acceptance_by_position": [c / verify_rounds if verify_rounds else 0.0 for c in counts["kept_by_position"]]}


def pool_acceptance(stats: list[dict]) -> dict:
    """`acceptance_summary` of several `speculative_generate` calls at once (their counts summed): the pooled figure
    over prompts and batches, not a mean of per-call means."""
    depths = {len(s["counts"]["kept_by_position"]) for s in stats}
    if len(depths) != 1:
        raise ValueError(f"pool_acceptance needs calls that drafted the same number of tokens, got {sorted(depths)}")
    total = {key: sum(s["counts"][key] for s in stats) for key in ("row_rounds", "tokens_uncut", "verify_rounds")}
    total["kept_by_position"] = [sum(column) for column in zip(*(s["counts"]["kept_by_position"] for s in stats))]
    return acceptance_summary(total)


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def speculative_generate(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    return_stats: bool = True,
    generator: torch.Generator | None = None,
    num_draft_tokens: int | None = None,
):
    """Generate with the model's own MTP heads as drafters: output identical to `model.base_model.generate`
    (greedy: token for token; sampling: in distribution), in fewer base forwards.

    `model`: an `MTPForCausalLM`. `input_ids` [B, T], left-padded when rows differ in length (`attention_mask` marks
    real tokens). `eos_token_id` / `pad_token_id` default to the base's generation config. Returns `(sequences,
    stats)`: sequences [B, T + longest generation] as `generate` lays them out (prompt included, rows that finished
    early padded with `pad_token_id`). `num_draft_tokens` (0..D, default D) drafts with the first heads only
    (Stern's window k = num_draft_tokens + 1; 0 is plain decoding); the output is the same for every value.
    Stats (None unless `return_stats`):
      - `forwards`: base forwards (the prefill counts: it yields the first token);
      - `mean_accepted_length`: tokens committed per base forward per active row (1.0 for plain decoding, at most
        D + 1), before cuts at EOS / max_new_tokens;
      - `acceptance_by_position`: [D], fraction of verify rounds (of active rows) in which drafts 1..i were all kept;
      - `drafted`, `accepted`: draft tokens verified / kept (active rows); `new_tokens`: tokens returned (no padding);
      - `wall_time_s`, `tokens_per_s` (new tokens of all rows per second), `accepted_per_round` (per round, per row,
        -1 for finished rows);
      - `counts`: the raw counts behind the two acceptance figures; `pool_acceptance` pools several calls' stats.
    """
    base = model.base_model
    gen_config = base.generation_config
    if eos_token_id is None:
        eos_token_id = gen_config.eos_token_id
    if pad_token_id is None:
        pad_token_id = gen_config.pad_token_id if gen_config.pad_token_id is not None else (
            eos_token_id[0] if isinstance(eos_token_id, (list, tuple)) else eos_token_id)
    if pad_token_id is None:
        pad_token_id = 0
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = input_ids.device
    eos = None if eos_token_id is None else torch.tensor(
        eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id], device=device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    sampler = Sampler(do_sample, temperature, top_k, top_p, generator)
    accept = accept_sampled if do_sample else accept_greedy
    B, T = input_ids.shape
    D = model.heads.num_depths if num_draft_tokens is None else num_draft_tokens
    if isinstance(D, bool) or not isinstance(D, int) or not 0 <= D <= model.heads.num_depths:
        raise ValueError(f"num_draft_tokens must be an integer in 0..{model.heads.num_depths}, got {num_draft_tokens!r}")
    start_time = time.perf_counter()

    state = DecodeState(
        tokens=torch.cat([input_ids, input_ids.new_full((B, max_new_tokens + D + 2), pad_token_id)], dim=1),
        prompt_len=T, pad_len=T - attention_mask.long().sum(1), mask=attention_mask.long()[:, :0],
        n_valid=torch.zeros(B, dtype=torch.long, device=device), generated=torch.zeros(B, dtype=torch.long, device=device),
        done=torch.zeros(B, dtype=torch.bool, device=device), cache=DynamicCache(),
    )
    drafter = make_drafter(model, D)
    was_training = model.training
    model.eval()
    no_drafts = input_ids.new_zeros(B, 0)
    forwards, accepted_rounds = 0, []
    # row_rounds: (row, round) pairs, prefill included; tokens_uncut: tokens they committed before cuts at EOS /
    # max_new_tokens; verify_rounds: those after the prefill; kept_by_position[i]: those that kept drafts 1..i+1
    counts = {"row_rounds": 0, "tokens_uncut": 0, "verify_rounds": 0, "kept_by_position": [0] * D}
    try:
        # prefill: a verify of the prompt with no drafts, whose slots are all kept
        logits = verify(model, state, input_ids, attention_mask)[:, -1:]
        k, next_token = accept(logits, no_drafts, sampler, None)
        update_cache(model, state, drafter, 0, T, k, next_token, no_drafts, max_new_tokens, eos)
        forwards, counts["row_rounds"], counts["tokens_uncut"] = 1, B, B
        rows = torch.arange(B, device=device)
        while not bool(state.done.all()):
            active = ~state.done
            drafts, draft_probs = drafter.propose(state, sampler) if D else (no_drafts, None)  # propose
            last = state.tokens[rows, state.column(state.n_valid)]
            new_start = state.mask.size(1)
            logits = verify(model, state, torch.cat([last[:, None], drafts], dim=1))  # verify
            k, next_token = accept(logits, drafts, sampler, draft_probs)  # accept
            update_cache(model, state, drafter, new_start, D + 1, k, next_token, drafts, max_new_tokens, eos)  # update
            forwards += 1
            k_active = k[active]
            accepted_rounds.append(torch.where(active, k, -1).tolist())
            counts["row_rounds"] += len(k_active)
            counts["verify_rounds"] += len(k_active)
            counts["tokens_uncut"] += int((k_active + 1).sum())
            for i in range(D):
                counts["kept_by_position"][i] += int((k_active > i).sum())
    finally:
        model.train(was_training)
        model.trunk.clear()

    length = int(state.generated.max())
    sequences = state.tokens[:, : T + length].clone()
    sequences[:, T:][torch.arange(length, device=device)[None] >= state.generated[:, None]] = pad_token_id
    if not return_stats:
        return sequences, None
    wall = time.perf_counter() - start_time
    new_tokens = int(state.generated.sum())
    stats = {
        "forwards": forwards,
        **acceptance_summary(counts),
        "drafted": counts["verify_rounds"] * D,
        "accepted": sum(counts["kept_by_position"]),
        "new_tokens": new_tokens,
        "wall_time_s": wall,
        "tokens_per_s": new_tokens / wall if wall > 0 else float("inf"),
        "accepted_per_round": accepted_rounds,
        "counts": counts,
    }
    return sequences, stats
