"""Self-speculative decoding with the MTP heads: blockwise parallel decoding (Stern et al. 2018), lossless.

Combined scoring and proposal model: ONE forward of the base over [x, d_1 .. d_D] (the last committed token x and
the D drafted tokens) scores the drafts with the main head and, from the same forward's hidden states, the MTP heads
propose the next D drafts. A round is these named stages, each in one place:

    choose    how many drafts this round verifies, 0..D: all of them, or with `adaptive_draft_tokens` the number
              that maximises expected tokens per measured second (`trl_mtp.adaptive_drafting`)  `DraftPlanner.choose`
    propose   drafts d_1..d_D (and their distributions q_i when sampling) from the heads     `Drafter.propose`
    verify    one base forward over [x, d_1..d_D] with the KV cache: main-head logits p_0..p_D  `verify`
    process   `generate`'s logits processors and warpers at every position, with that position's prefix
              (committed tokens and the drafts before it); the drafts' q_i get the same      `Sampler.scores`
    accept    greedy: keep the longest prefix with d_j = argmax p_{j-1}, then the bonus argmax p_k;
              sampling: keep d_j with probability min(1, p(d_j) / q(d_j)), on the first rejection
              resample from norm(max(0, p - q)); after D acceptances the bonus is drawn from p_D  `accept_greedy` /
                                                                                                  `accept_sampled`
    update    commit k accepted drafts + 1 token per row (EOS and max_new_tokens cut a block), crop the KV cache to
              the longest accepted row, mark the other rows' rejected slots as holes in the 2-D attention mask,
              and let the drafter extend / crop its own caches; planned on the device and read back once per
              round (the loop's lengths and counts are Python ints from that read)                 `update_cache`
    observe   the planner learns the round's time and per-depth acceptance (Python numbers)     `DraftPlanner.observe`
    drop      rows that finished leave the batch, the cache and the drafter's state       `DecodeState.drop_finished`

so a row gains k + 1 tokens per base forward (k = accepted drafts), and the output is what the base alone produces
under the model's generation config, as `generate` applies it: token for token under greedy decoding, in
distribution under sampling, whatever number of drafts each round takes. Near the model's position limit a round
drafts fewer tokens (`drafts_that_fit`).

Batches: one shared cache of "slots". A row's slots hold its left padding, its committed tokens and holes (slots of
drafts rejected in that row but kept because another row accepted more); the 2-D mask marks valid slots, and every
forward gets explicit per-row position ids (= the number of valid slots before; GPT-2's learned positions need this).
The cache is laid out from the model's config (`new_cache`). A sliding window counts slots, holes included, so with
sliding-window layers each round moves every row's recent slots right past its holes (`SlotUpdate`): the holes then
sit before every later window.

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
from transformers.cache_utils import DummyLayer, DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs
from transformers.generation import logits_process as lp
from transformers.generation.configuration_utils import GenerationMode

from trl_mtp.adaptive_drafting import DraftPlanner
from trl_mtp.heads.base import MTPHeads


def left_pad(rows: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows of different lengths as one left-padded batch (generation appends on the right): (ids, mask)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


# ----------------------------------------------------------------------------------------------------------------------
# generation settings: the logits processors and warpers `generate` builds from the merged generation config
# ----------------------------------------------------------------------------------------------------------------------
# processors that read the scores only: one call covers every row and position
POSITION_FREE = {
    lp.TemperatureLogitsWarper,
    lp.TopKLogitsWarper,
    lp.TopPLogitsWarper,
    lp.MinPLogitsWarper,
    lp.TypicalLogitsWarper,
    lp.EpsilonLogitsWarper,
    lp.EtaLogitsWarper,
    lp.TopHLogitsWarper,
    lp.SuppressTokensLogitsProcessor,
    lp.InfNanRemoveLogitsProcessor,
    lp.LogitNormalization,
}
# processors that are functions of (row, its prefix, its scores), keeping nothing between calls: applied per prefix
PREFIX_FUNCTIONS = {
    lp.RepetitionPenaltyLogitsProcessor,
    lp.EncoderRepetitionPenaltyLogitsProcessor,
    lp.NoRepeatNGramLogitsProcessor,
    lp.EncoderNoRepeatNGramLogitsProcessor,
    lp.SequenceBiasLogitsProcessor,
    lp.NoBadWordsLogitsProcessor,
    lp.MinLengthLogitsProcessor,
    lp.MinNewTokensLengthLogitsProcessor,
    lp.ForcedBOSTokenLogitsProcessor,
    lp.ForcedEOSTokenLogitsProcessor,
    lp.ExponentialDecayLengthPenalty,
    lp.SuppressTokensAtBeginLogitsProcessor,
}


def generation_settings(
    base, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, generation_config=None, **kwargs
):
    """(config, processors) as `generate` prepares them: the model's generation config (or `generation_config`)
    updated by the given settings (None: not given), transformers' defaults for the rest (top_k = 50 among them), and
    the logits processors and warpers `generate` builds from it, each one checked to apply position by position."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unset = {
        name: kwargs.get(name) is None
        and getattr(generation_config, name, None) is None
        and getattr(base.generation_config, name) is None
        for name in ("max_length", "min_length")
    }
    config, unused = base._prepare_generation_config(generation_config, **kwargs)
    if unused:
        raise ValueError(f"not generation settings: {', '.join(sorted(unused))}")
    mode = config.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        raise ValueError(
            f"speculative decoding does greedy search and sampling, not {mode.value} (set by the "
            f"generation config: num_beams={config.num_beams}, penalty_alpha={config.penalty_alpha})"
        )
    if config.num_return_sequences not in (None, 1):
        raise ValueError(
            f"speculative decoding returns one sequence per prompt, got "
            f"num_return_sequences={config.num_return_sequences}"
        )
    if config.stop_strings is not None:
        raise ValueError(f"speculative decoding stops at EOS tokens only, got stop_strings={config.stop_strings!r}")
    config.max_new_tokens = max_new_tokens
    base._prepare_generated_length(
        config,
        has_default_max_length=unset["max_length"],
        has_default_min_length=unset["min_length"],
        model_input_name="input_ids",
        input_ids_length=input_ids.size(1),
        inputs_tensor=input_ids,
    )
    base._prepare_special_tokens(config, True, device=input_ids.device, batch_size=input_ids.size(0))
    processors = base._get_logits_processor(
        config,
        input_ids_seq_length=input_ids.size(1),
        encoder_input_ids=input_ids,
        device=input_ids.device,
        model_kwargs={"attention_mask": attention_mask},
    )
    for processor in processors:
        if type(processor) not in POSITION_FREE | PREFIX_FUNCTIONS:
            raise ValueError(
                f"speculative decoding cannot apply {type(processor).__name__} at every verify position "
                "(it keeps state between steps, or is not supported): unset the generation setting "
                "that adds it"
            )
    return config, processors


def prefix_ids(state: DecodeState, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, W], committed [B]): each row's prompt (left-padded) and committed tokens (`committed` of them), then
    `drafts` [B, m]; a position's prefix is a row's first `committed + j` ids, as `generate` would hold them."""
    ids = state.tokens.clone()
    committed = state.prompt_len + state.generated
    cols = (committed[:, None] + torch.arange(drafts.size(1), device=ids.device)).clamp(max=ids.size(1) - 1)
    return ids.scatter_(1, cols, drafts), committed


def apply_per_prefix(
    processors, ids: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """scores [B, n, V] with position (r, i) processed as `generate` would after the prefix ids[r, :lengths[r, i]]
    (active rows only). One call per prefix length: each call sees the whole batch, since processors may hold
    per-row settings (the prompt's padding, for instance); rows whose position has another length are not read."""
    out = scores.clone()
    rows = torch.arange(scores.size(0), device=scores.device)
    for length in torch.unique(lengths[active]).tolist():
        at = (lengths == length) & active[:, None]  # [B, n]: at most one position per row
        processed = processors(ids[:, :length], scores[rows, at.float().argmax(1)].clone())
        out[at] = processed[at.any(1)]
    return out


@dataclass
class Sampler:
    """How tokens are picked: `generate`'s logits processors and warpers applied to a position's logits with that
    position's prefix, then argmax (greedy) or a draw from the softmax (sampling)."""

    processors: list = field(default_factory=lp.LogitsProcessorList)
    do_sample: bool = False
    generator: torch.Generator | None = None

    def scores(self, state: DecodeState, logits: torch.Tensor, drafts: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Processed scores [B, n, V] (float32, as `generate`) of logits [B, n, V] whose position i follows each
        row's committed tokens and drafts[:, :first + i] (drafts [B, m], m >= first + n - 1)."""
        scores = logits.float()
        if not self.processors:
            return scores
        if all(type(p) in POSITION_FREE for p in self.processors):
            return self.processors(None, scores.flatten(0, 1)).view_as(scores)
        ids, committed = prefix_ids(state, drafts)
        lengths = committed[:, None] + first + torch.arange(scores.size(1), device=scores.device)
        # processors may hold per-row settings of the caller's batch (the prompt's rows): they see that batch, the
        # rows that left it inactive
        B0 = state.output_tokens.size(0)
        processed = apply_per_prefix(
            self.processors,
            state.whole_batch(ids, state.output_tokens),
            state.whole_batch(lengths, lengths.new_zeros(B0, lengths.size(1))),
            state.whole_batch(scores, scores.new_zeros(B0, *scores.shape[1:])),
            state.whole_batch(~state.done, state.done.new_zeros(B0)),
        )
        return processed[state.row_index]

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of probs [N, V]."""
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def pick(self, state: DecodeState, logits: torch.Tensor, drafts: torch.Tensor):
        """(token [B], its distribution [B, V] or None when greedy) from logits [B, V] at the position after each
        row's committed tokens and `drafts` [B, j]."""
        scores = self.scores(state, logits[:, None], drafts, first=drafts.size(1))[:, 0]
        if not self.do_sample:
            return scores.argmax(-1), None
        probs = scores.softmax(-1)
        return self.sample(probs), probs


# ----------------------------------------------------------------------------------------------------------------------
# accept: how many drafts each row keeps, and the token that follows them
# ----------------------------------------------------------------------------------------------------------------------
def accept_greedy(scores: torch.Tensor, drafts: torch.Tensor, sampler: Sampler | None = None, draft_probs=None):
    """scores [B, D+1, V] at [x, d_1..d_D]; drafts [B, D] -> (accepted k [B], next token [B]).
    d_j is kept while it equals the main head's argmax at the slot before it; the next token is argmax p_k."""
    target = scores.argmax(-1)  # [B, D+1]
    matches = (drafts == target[:, :-1]).long()
    k = matches.cumprod(dim=1).sum(dim=1)  # length of the all-match prefix
    return k, target.gather(1, k[:, None]).squeeze(1)


def draft_acceptance(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """[B, D] probability of keeping d_j (once d_1..d_{j-1} are kept): min(1, p_j(d_j) / q_j(d_j)); p, q [B, D, V].
    q_j(d_j) > 0: d_j was drawn from q_j."""
    p_draft = p.gather(2, drafts[..., None]).squeeze(2)
    q_draft = q.gather(2, drafts[..., None]).squeeze(2)
    return (p_draft / q_draft).clamp(max=1.0)


def next_distribution(p: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, V] distribution of the token after k kept drafts (p [B, D+1, V], q [B, D, V]): norm(max(0, p_k - q_k))
    at the first rejected draft, p_D (the bonus) after D acceptances."""
    rows = torch.arange(p.size(0), device=p.device)
    p_k = p[rows, k]
    q_k = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)[rows, k]  # q = 0 after D: the residual is p_D
    residual = (p_k - q_k).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp(min=1e-30), p_k)  # p == q exactly: nothing rejected, use p


def accept_sampled(scores: torch.Tensor, drafts: torch.Tensor, sampler: Sampler, draft_probs: torch.Tensor):
    """Speculative rejection sampling (Leviathan et al. 2023; Chen et al. 2023): per row, d_j ~ q_j is kept with
    probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection the token is drawn from norm(max(0, p_j - q_j));
    if all D are kept, the bonus is drawn from p_D. The committed tokens are then distributed exactly as samples of p
    (`draft_acceptance` and `next_distribution` hold the rule; this draws with them)."""
    p = scores.softmax(-1)  # [B, D+1, V]
    B, D = drafts.shape
    if D == 0:  # the prefill, or no room for drafts: nothing to verify
        return drafts.new_zeros(B), sampler.sample(p[:, 0])
    u = torch.rand(B, D, generator=sampler.generator, dtype=p.dtype, device=p.device)
    k = (u < draft_acceptance(p[:, :D], draft_probs, drafts)).long().cumprod(dim=1).sum(dim=1)
    return k, sampler.sample(next_distribution(p, draft_probs, k))


# ----------------------------------------------------------------------------------------------------------------------
# slots, masks and caches
# ----------------------------------------------------------------------------------------------------------------------
ROLLBACK_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, DummyLayer)  # cache layers a rejected draft can leave


def new_cache(config) -> DynamicCache:
    """An empty cache laid out from the model's config as `generate` lays it (sliding-window layers keep only their
    window), recording past slots until each round's crop. Refuses layouts that cannot drop rejected drafts
    (linear-attention / hybrid state) and chunked attention (its chunks count slots, holes included)."""
    text_config = config.get_text_config(decoder=True)
    layer_types = get_layer_types_and_kwargs(text_config)[0]
    if "chunked_attention" in layer_types:
        raise ValueError("speculative decoding does not support chunked attention (layer type 'chunked_attention')")
    cache = DynamicCache(config=config)
    bad = sorted(
        {
            f"{kind!r} ({type(layer).__name__})"
            for kind, layer in zip(layer_types, cache.layers)
            if type(layer) not in ROLLBACK_LAYERS
        }
    )
    if bad:
        raise ValueError(
            f"speculative decoding needs a cache it can crop after rejected drafts; this model's layer "
            f"types {', '.join(bad)} keep a state that cannot be cropped"
        )
    cache.activate_past_recording()
    return cache


def cache_window(cache: DynamicCache) -> int | None:
    """The widest sliding window among the cache's layers (None: no sliding-window layer)."""
    return max((layer.sliding_window for layer in cache.layers if getattr(layer, "is_sliding", False)), default=None)


def cache_length(cache: DynamicCache) -> int:
    """Slots held by the cache (its longest layer: a head's cache only fills the copied layer's index)."""
    return max((layer.get_seq_length() for layer in cache.layers), default=0)


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` slots (transformers 5's `crop` takes the number of slots to remove, negated; removing
    none still trims a sliding-window layer back to its window)."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.crop(-max(layer.get_seq_length() - length, 0))


def shift_slots(x: torch.Tensor, dim: int, start: int, shift: torch.Tensor) -> torch.Tensor:
    """x with slots along `dim` (rows along dim 0): row r's entries from index `start` on move shift[r] places right.
    The first shift[r] entries of that region repeat the entry at `start` (holes, masked or cut later); the last
    shift[r] fall off."""
    start = max(start, 0)
    size = x.size(dim) - start
    if size <= 0:
        return x
    x = x.expand(shift.size(0), *x.shape[1:])
    source = start + (torch.arange(size, device=x.device)[None] - shift[:, None]).clamp(min=0)  # [B, size]
    index = source.view(x.size(0), *[1] * (dim - 1), size, *[1] * (x.dim() - dim - 1))
    index = index.expand(*x.shape[:dim], size, *x.shape[dim + 1 :])
    return torch.cat([x.narrow(dim, 0, start), x.gather(dim, index)], dim=dim)


@dataclass
class SlotUpdate:
    """How one round changes the cache slots: the verify appended slots `new_start`..; row r keeps the first
    `kept[r]` of them and the cache its first `keep` slots (the longest row's), so other rows' rejected slots become
    holes. A sliding window counts slots, holes included: with one (`window`), every row's slots from `region_start`
    = new_start - window + 1 on move `shift[r]` (its holes) places right, the holes landing before every later
    window. Applied alike to the base's cache and mask and to each drafter's per-slot state."""

    new_start: int
    keep: int | None  # None until the round's host read gives the longest row
    kept: torch.Tensor  # [B]
    region_start: int = 0
    shift: torch.Tensor | None = None  # [B]; None: holes stay where they are

    @classmethod
    def plan(cls, new_start: int, kept: torch.Tensor, window: int | None) -> SlotUpdate:
        """Planned on the device, without reading `kept` back: `keep` is set by `settle` once the round's one host
        read has it."""
        update = cls(new_start, None, kept)
        if window is not None:
            update.region_start, update.shift = max(new_start - window + 1, 0), kept.max() - kept
        return update

    def settle(self, kept: list[int]) -> None:
        """`kept` read back: the cache keeps the longest row's slots; no shift when no row has holes."""
        self.keep = self.new_start + max(kept)
        if min(kept) == max(kept):
            self.shift = None

    @property
    def last_slot(self) -> torch.Tensor:
        """[B] slot of each row's last kept slot once moved."""
        return self.new_start + self.kept - 1 + (0 if self.shift is None else self.shift)

    @property
    def last_new(self) -> torch.Tensor:
        """[B] index, among the slots just verified, of each row's last kept one (0 for rows that kept none)."""
        return (self.kept - 1).clamp(min=0)

    def move(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """A per-slot tensor (slot 0 at index 0) shifted and cut to `keep` slots."""
        if self.shift is not None:
            x = shift_slots(x, dim, self.region_start, self.shift)
        return x if self.keep is None else x.narrow(dim, 0, self.keep)

    def move_cache(self, cache: DynamicCache, crop: bool = True) -> None:
        """Shift every layer's keys and values in place (a sliding-window layer holds only its latest slots), then
        crop to `keep` slots."""
        if self.shift is not None:
            for layer in cache.layers:
                if getattr(layer, "is_initialized", False) and layer.keys.numel():
                    first_slot = layer.get_seq_length() - layer.keys.size(-2)
                    layer.keys = shift_slots(layer.keys, 2, self.region_start - first_slot, self.shift)
                    layer.values = shift_slots(layer.values, 2, self.region_start - first_slot, self.shift)
        if crop:
            crop_cache(cache, self.keep)

    def move_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The 2-D mask [B, S] after the round: rejected slots off, shifted, the moved holes off (cut to `keep` slots
        once known: slots past it are off in every row)."""
        slots = torch.arange(mask.size(1), device=mask.device)[None]
        mask = self.move(mask.masked_fill(slots >= self.new_start + self.kept[:, None], 0))
        if self.shift is not None:
            slots = slots[:, : mask.size(1)]
            mask = mask.masked_fill((slots >= self.region_start) & (slots < self.region_start + self.shift[:, None]), 0)
        return mask


def slot_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] position id of each valid slot (valid slots before it), -1 on padding and holes."""
    return torch.where(mask.bool(), mask.long().cumsum(1) - 1, -1)


WINDOW_MASK_ATTENTION = ("sdpa", "eager")  # the attention implementations `window_attention_mask` builds masks for


def window_attention_mask(mask: torch.Tensor, start: int, attn_implementation: str, dtype: torch.dtype):
    """4-D mask [B, 1, S - start, S] for queries at slots start..S-1 over keys 0..S-1: causal and valid keys only.
    Every query may see itself, so padding and hole queries (whose outputs nobody reads) never get an empty row."""
    S = mask.size(1)
    q = torch.arange(start, S, device=mask.device)[:, None]
    kv = torch.arange(S, device=mask.device)[None, :]
    allowed = ((kv <= q)[None] & mask.bool()[:, None, :]) | (kv == q)[None]
    return attention_mask_for(allowed[:, None], attn_implementation, dtype)


def attention_mask_for(allowed: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean 4-D mask [B, 1, queries, keys] (True: may attend) as the attention implementation takes it; a 4-D
    mask passes through transformers' mask creation as it is."""
    if attn_implementation == "eager":  # eager attention adds the mask to the scores
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed  # sdpa: a boolean mask


def first_queries(layer_kwargs: dict, n: int, m: int) -> dict:
    """A layer's call kwargs for n new slots cut to the first m of them: per-position inputs (rotary embeddings,
    position ids) cut along the slots, the attention mask to the first m queries and the keys before the last n - m
    (keys are the cached slots, then the new ones)."""
    if m == n:
        return layer_kwargs
    kwargs = dict(layer_kwargs)
    for name in ("position_ids", "position_embeddings", "cache_position"):
        value = kwargs.get(name)
        if isinstance(value, (tuple, list)):
            kwargs[name] = tuple(v[..., :m, :] for v in value)
        elif value is not None:
            kwargs[name] = value[..., :m]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        kwargs["attention_mask"] = mask[..., :m, : mask.size(-1) - (n - m)]
    return kwargs


def select_rows(x, index: torch.Tensor):
    """Rows `index` of a per-row tensor (or tuple of them); one broadcast row stays as it is."""
    if isinstance(x, (tuple, list)):
        return tuple(select_rows(v, index) for v in x)
    return x if x.size(0) == 1 else x[index]


class SlotChunks:
    """Per-slot values of the verified slots (name -> [B, n, ...] tensor or tuple of them: the trunk's hidden states,
    per-position layer inputs), kept as one chunk per round and joined only when a drafter reads them, so a round
    that drafts nothing stores references and copies nothing (no O(S) work). Chunks before the first slot any depth
    may still read are forgotten (`forget`)."""

    def __init__(self):
        self.starts: list[int] = []  # first slot of each chunk
        self.chunks: list[dict] = []

    @staticmethod
    def _map(value, fn):
        """fn applied to a tensor, or to each tensor of a tuple."""
        return tuple(fn(v) for v in value) if isinstance(value, (tuple, list)) else fn(value)

    def append(self, update: SlotUpdate, values: dict) -> None:
        """The slots update.new_start.. just verified, cut to the `update.keep` the cache keeps. A move of holes (a
        sliding window) joins every chunk and moves it as the base's cache moves (slot 0 first: nothing forgotten)."""
        if update.shift is None:
            m = update.keep - update.new_start
            self.starts.append(update.new_start)
            self.chunks.append({name: self._map(v, lambda x: x[:, :m]) for name, v in values.items()})
            return
        old = self.read(0) if self.chunks else {}

        def extend(previous, new):
            full = new if previous is None else torch.cat([previous, new.expand(previous.size(0), *new.shape[1:])], 1)
            return update.move(full)

        moved = {}
        for name, new in values.items():
            if isinstance(new, (tuple, list)):
                moved[name] = tuple(map(extend, old.get(name) or [None] * len(new), new))
            else:
                moved[name] = extend(old.get(name), new)
        self.starts, self.chunks = [0], [moved]

    def read(self, start: int) -> dict:
        """The values of slots start.. (to the last verified one), joined; the joined chunk replaces its parts."""
        i = max(j for j, first in enumerate(self.starts) if first <= start)
        if len(self.chunks) - i > 1:
            parts = self.chunks[i:]
            rows = max(self._rows(part) for part in parts)

            def join(name):
                values = [part[name] for part in parts]
                if isinstance(values[0], (tuple, list)):
                    return tuple(self._cat([v[j] for v in values], rows) for j in range(len(values[0])))
                return self._cat(values, rows)

            self.starts, self.chunks = self.starts[: i + 1], self.chunks[:i] + [{name: join(name) for name in parts[0]}]
        offset = start - self.starts[i]
        return {name: self._map(v, lambda x: x[:, offset:]) for name, v in self.chunks[i].items()}

    @staticmethod
    def _rows(chunk: dict) -> int:
        return max(v[0].size(0) if isinstance(v, (tuple, list)) else v.size(0) for v in chunk.values())

    @staticmethod
    def _cat(values: list, rows: int) -> torch.Tensor:
        return torch.cat([v.expand(rows, *v.shape[1:]) for v in values], dim=1)

    def forget(self, before: int) -> None:
        """Drop the chunks that end at or before slot `before` (no depth reads them again)."""
        keep = [j for j in range(len(self.starts)) if j + 1 == len(self.starts) or self.starts[j + 1] > before]
        self.starts, self.chunks = [self.starts[j] for j in keep], [self.chunks[j] for j in keep]

    def select_rows(self, index: torch.Tensor) -> None:
        self.chunks = [{name: select_rows(v, index) for name, v in chunk.items()} for chunk in self.chunks]


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
    window: int | None = None  # the cache's widest sliding window (None: none)
    n_valid_host: list[int] | None = None  # `n_valid` and `done` as read back once per round
    done_host: list[bool] | None = None

    # rows that finished leave the batch (`drop_finished`): the output holds every row of the caller's batch
    output_tokens: torch.Tensor | None = None  # [B0, width] as `tokens`, written when rows leave and at the end
    output_generated: torch.Tensor | None = None  # [B0]
    rows: list[int] | None = None  # the caller's row index of each live row
    row_index: torch.Tensor | None = None  # `rows` on the device

    def column(self, position: torch.Tensor) -> torch.Tensor:
        """Column in `tokens` of each row's token at `position` (positions count a row's tokens, padding excluded)."""
        return self.pad_len.view(-1, *[1] * (position.dim() - 1)) + position

    def flush(self) -> None:
        """Write the rows' tokens and counts to the output, at their places in the caller's batch."""
        self.output_tokens.index_copy_(0, self.row_index, self.tokens)
        self.output_generated.index_copy_(0, self.row_index, self.generated)

    def drop_finished(self, drafter: Drafter) -> None:
        """Rows that finished leave the batch (their tokens go to the output; their slots leave the cache, the mask
        and the drafter's state), so later rounds verify live rows only. From the round's host read: no device read."""
        live = [i for i, done in enumerate(self.done_host) if not done]
        if not live or len(live) == len(self.done_host):
            return
        self.flush()
        index = torch.tensor(live, device=self.tokens.device)
        for name in ("tokens", "pad_len", "mask", "n_valid", "generated", "done", "last_slot", "row_index"):
            setattr(self, name, getattr(self, name)[index])
        self.rows = [self.rows[i] for i in live]
        self.n_valid_host = [self.n_valid_host[i] for i in live]
        self.done_host = [False] * len(live)
        self.cache.batch_select_indices(index)
        drafter.select_rows(index)

    def whole_batch(self, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """x [B, ...] of the live rows placed in the caller's batch [B0, ...], the other rows from `fill`."""
        return fill.index_copy(0, self.row_index, x)


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
        # every depth projected by the base's own final norm and LM head: one call for all depths
        self.shared_projection = type(self.heads).depth_logits is MTPHeads.depth_logits or getattr(
            self.heads, "share_lm_head", False
        )

    def project(self, hiddens: list[torch.Tensor]) -> torch.Tensor:
        """Logits [B, n, V] of depths 1..n from their pre-norm hiddens [B, d]: one norm and one LM head matmul for all
        depths when the family projects with the base's modules, called directly (outside the capture hook, which
        would take a head's state for the trunk's); per depth otherwise."""
        if self.shared_projection:
            return self.trunk.lm_head.forward(self.trunk.final_norm.forward(torch.stack(hiddens, 1)))
        return torch.stack([self.heads.depth_logits(i, h) for i, h in enumerate(hiddens, start=1)], 1)

    def observe(self, state: DecodeState, hidden: torch.Tensor, layer_kwargs: dict, update: SlotUpdate):
        """hidden [B, n, d]: trunk hidden states of the slots update.new_start.. just verified, before the base's
        cache and mask moved by `update`; the drafter's own per-slot state follows the same update."""
        raise NotImplementedError

    def propose(self, state: DecodeState, sampler: Sampler, num_drafts: int):
        """-> drafts [B, m] from the first m = num_drafts (1..D) heads, and their distributions [B, m, V] when
        sampling (else None). What a depth drafts depends on the committed tokens only, never on how many drafts
        earlier rounds took."""
        raise NotImplementedError

    def depth_logits(self, state: DecodeState, num_drafts: int) -> torch.Tensor:
        """Logits [B, num_drafts, V] of depths 1..num_drafts at each row's last kept slot, for families whose depths
        read that slot only (not the drafts of earlier depths): what tree drafts branch on."""
        raise NotImplementedError(f"{self.heads.head_type} depths read the drafts of earlier depths")

    def plan_figure(self, mask: torch.Tensor, n_valid: torch.Tensor, done: torch.Tensor) -> torch.Tensor | None:
        """A per-row integer [B] the drafter needs on the host after the update (the slot mask, positions and finished
        rows as they will be), read back with the round's one host read; None: nothing."""
        return None

    def settle_figure(self, state: DecodeState, values: list[int] | None) -> None:
        """Receives `plan_figure`'s values as Python ints."""

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep the rows `index` of the drafter's per-row state (finished rows left the batch)."""
        raise NotImplementedError

    def _chain(self, state: DecodeState, logits_of_depth, sampler: Sampler, num_drafts: int):
        """Drafts of depths 1..num_drafts: logits_of_depth(depth, drafts so far [B, depth - 1]) -> [B, V] (or those
        depths' logits [B, num_drafts, V] when they do not depend on the drafts), each picked with its prefix (the
        committed tokens and the drafts before it)."""
        drafts = state.tokens.new_zeros(state.tokens.size(0), 0)
        probs = []
        if (
            isinstance(logits_of_depth, torch.Tensor)
            and not sampler.do_sample
            and all(type(p) in POSITION_FREE for p in sampler.processors)
        ):  # no prefix needed: every depth at once
            return sampler.scores(state, logits_of_depth, drafts).argmax(-1), None
        if isinstance(logits_of_depth, torch.Tensor):
            stacked = logits_of_depth
            logits_of_depth = lambda depth, drafts: stacked[:, depth - 1]  # noqa: E731
        for depth in range(1, num_drafts + 1):
            token, prob = sampler.pick(state, logits_of_depth(depth, drafts), drafts)
            drafts = torch.cat([drafts, token[:, None]], dim=1)
            probs.append(prob)
        return drafts, (torch.stack(probs, 1) if sampler.do_sample else None)


class PositionwiseDrafter(Drafter):
    """blockwise / medusa: depth i at t is a function of h_t alone (read at the rows' last kept slots when drafting)."""

    def observe(self, state, hidden, layer_kwargs, update):
        self.hidden, self.last_new = hidden, update.last_new  # references: a round that drafts nothing reads nothing

    def select_rows(self, index):
        self.hidden, self.last_new = self.hidden[index], self.last_new[index]

    def propose(self, state, sampler, num_drafts):
        return self._chain(state, self.depth_logits(state, num_drafts), sampler, num_drafts)

    def depth_logits(self, state, num_drafts):
        h = self.hidden[torch.arange(self.hidden.size(0), device=self.hidden.device), self.last_new][:, None]
        dummy = torch.zeros(h.shape[:2], dtype=torch.long, device=h.device)
        hiddens = [z[:, 0] for _, z in self.heads.iter_depth_hiddens(h, dummy, num_depths=num_drafts)]
        return self.project(hiddens)


class WindowDrafter(Drafter):
    """A family whose depths are decoder layers with KV caches of their own that mirror the base's slots (parallel,
    sequential). The verified slots' trunk hidden states and per-position layer inputs are kept (`SlotChunks`), and a
    depth's layer runs only when the depth drafts, over the window of slots it has not computed since it last drafted
    (`valid`: per depth, slots before it are final in its cache): a round that drafts nothing runs no head, and a
    depth drafting after such rounds catches up over all of them in one call."""

    PER_POSITION = ("position_ids", "position_embeddings")

    def __init__(self, model, num_depths: int | None = None):
        super().__init__(model, num_depths)
        self.attn_implementation = model.base_model.config._attn_implementation
        self.slots = SlotChunks()
        self.valid = [0] * self.num_depths  # per depth: slots before it are final in its cache (the prefill: none)
        self.window = None  # the base cache's sliding window (None: none), set at the first update

    def observe(self, state, hidden, layer_kwargs, update):
        self.window, self.layer_kwargs = state.window, layer_kwargs
        values = {name: layer_kwargs[name] for name in self.PER_POSITION if layer_kwargs.get(name) is not None}
        self.slots.append(update, {"hidden": hidden, **values})

    def forget_read_slots(self) -> None:
        """Drop the kept slots every depth has computed (with a sliding window, holes move through the whole
        sequence: everything is kept)."""
        if self.window is None:
            self.slots.forget(min(self.valid, default=0))

    def window_kwargs(self, state, start: int, values: dict) -> dict:
        """The layer kwargs of a window of queries at slots start..S-1 over keys 0..S-1 (`values`: the per-slot
        values from `start`), the same for every depth (its cache is set per depth)."""
        if self.attn_implementation not in WINDOW_MASK_ATTENTION:
            raise NotImplementedError(
                f"{self.heads.head_type} drafting supports sdpa and eager attention, not {self.attn_implementation!r}"
            )
        S = state.mask.size(1)
        kwargs = dict(self.layer_kwargs)
        kwargs["attention_mask"] = window_attention_mask(state.mask, start, self.attn_implementation, self.dtype)
        for name in self.PER_POSITION:
            if name in values:
                kwargs[name] = values[name]
        if "cache_position" in kwargs or "cache_position" in self.trunk.layer_parameter_names:
            kwargs["cache_position"] = torch.arange(start, S, device=state.mask.device)
        return kwargs

    @property
    def dtype(self) -> torch.dtype:
        return self.slots.chunks[-1]["hidden"].dtype

    def select_rows(self, index):
        self.slots.select_rows(index)
        for cache in self.caches:
            cache.batch_select_indices(index)


class ParallelDrafter(WindowDrafter):
    """parallel: depth i is a decoder layer over the trunk's hidden sequence, z_i = Layer_i(h). Its KV cache mirrors
    the base's slots; it runs over a window of kept slots when the depth drafts (`WindowDrafter`). With a sliding
    window the holes move every round, and an attention other than sdpa or eager (flash, flex, a registered one) takes
    a mask `window_attention_mask` cannot build, so there the heads run every round over the kept slots, with the very
    kwargs the base's last layer got, and are cropped with the base's cache."""

    def __init__(self, model, num_depths: int | None = None):
        super().__init__(model, num_depths)
        # laid out as the base's cache: the head layer (a copy of the last layer) gets that layer's mask
        self.caches = [new_cache(model.base_model.config) for _ in range(self.num_depths)]
        self.z = [None] * self.num_depths  # per depth: its output at each row's last kept slot, once computed
        self.every_round = False  # whether the heads run every round (set at the first update)

    def observe(self, state, hidden, layer_kwargs, update):
        # the heads run over the slots some row kept only: the rest would be cropped unread
        m = update.keep - update.new_start
        self.last_round = (update.new_start, first_queries(layer_kwargs, hidden.size(1), m))
        self.every_round = state.window is not None or self.attn_implementation not in WINDOW_MASK_ATTENTION
        if not self.every_round:
            return super().observe(state, hidden, layer_kwargs, update)
        self.window = state.window
        hidden, layer_kwargs = hidden[:, :m], self.last_round[1]
        rows = torch.arange(hidden.size(0), device=hidden.device)
        self.z = []
        for depth, cache in enumerate(self.caches, start=1):
            z = self.heads.depth_hidden(
                depth, hidden, layer_kwargs=self.trunk.layer_kwargs_with_cache(layer_kwargs, cache)
            )
            update.move_cache(cache)
            self.z.append(z[rows, update.last_new])

    def propose(self, state, sampler, num_drafts):
        return self._chain(state, self.depth_logits(state, num_drafts), sampler, num_drafts)

    def depth_logits(self, state, num_drafts):
        if not self.every_round:
            self.catch_up(state, num_drafts)
        return self.project(self.z[:num_drafts])

    def catch_up(self, state, num_drafts):
        """Depths 1..num_drafts run over the slots each has not computed; z_i read at the rows' last kept slots."""
        B, S = state.mask.shape
        rows = torch.arange(B, device=state.mask.device)
        last_start, last_kwargs = self.last_round
        first = self.valid[num_drafts - 1]  # depths drafting together share `valid`; a later depth lags behind
        read = self.slots.read(first)
        windows = {}
        for depth, start in enumerate(self.valid[:num_drafts], start=1):
            if start == S:  # computed since the last verify
                continue
            if start not in windows:
                values = {
                    name: SlotChunks._map(v, lambda x, skip=start - first: x[:, skip:]) for name, v in read.items()
                }
                kwargs = last_kwargs if start == last_start else self.window_kwargs(state, start, values)
                windows[start] = values["hidden"], kwargs
            hidden, kwargs = windows[start]
            cache = self.caches[depth - 1]
            z = self.heads.depth_hidden(depth, hidden, layer_kwargs=self.trunk.layer_kwargs_with_cache(kwargs, cache))
            self.z[depth - 1] = z[rows, state.last_slot - start]
        self.valid[:num_drafts] = [S] * num_drafts
        self.forget_read_slots()

    def select_rows(self, index):
        super().select_rows(index)
        self.last_round = (None, None)  # the last verify's kwargs hold the rows that left: windows build their own
        self.z = [None if z is None else z[index] for z in self.z]


class SequentialDrafter(WindowDrafter):
    """sequential (DeepSeek-V3): h_i(t) = Block_i(W_i [enorm(emb(x_{t+i})); hnorm(h_{i-1}(t))]), a causal chain.

    Depth i's cache entry at position t is final once computed with x_{t+i} committed (n = a row's valid slots; its
    token at position n is committed, not yet in the base's cache). Each round the drafting depths are
    recomputed over a window of slots [start, S): from the first slot any row may still need (position n - D), or
    the first slot a drafting depth has not computed since (a round that drafts fewer depths, or none, leaves the
    others behind: `valid` is kept per depth), to the end;
    inside the window a token x_{t+i} not yet known is the draft of an earlier depth at the drafting position n - 1,
    as in training's teacher forcing but with drafts. So the chain needs, per slot, the trunk's hidden state and the
    per-position layer inputs (rotary embeddings, position ids), kept with the base's slots (`WindowDrafter`)."""

    def __init__(self, model, num_depths: int | None = None):
        super().__init__(model, num_depths)
        # full layers whatever the base's layout: each depth attends through its own window mask over every slot
        self.caches = [DynamicCache() for _ in range(self.num_depths)]
        self.drafted = False  # whether this round drafted (only then may entries have read a draft)

    @property
    def start(self) -> int:
        """The first slot a round drafting with every depth recomputes."""
        return min(self.valid)

    def observe(self, state, hidden, layer_kwargs, update):
        super().observe(state, hidden, layer_kwargs, update)
        for cache in self.caches:  # slots before `valid` stay final where they move; the rest is recomputed
            update.move_cache(cache, crop=False)

    def propose(self, state, sampler, num_drafts):
        B, S = state.mask.shape
        start = min(self.valid[:num_drafts])
        positions = slot_positions(state.mask)[:, start:]  # [B, W]
        rows = torch.arange(B, device=positions.device)
        draft_col = state.column(state.n_valid)  # column of each row's token at position n (its last committed)
        values = self.slots.read(start)
        h0 = values["hidden"]
        prev = h0
        window_kwargs = self.window_kwargs(state, start, values)  # one window mask per round, for every depth

        def logits_of_depth(depth, drafts):
            nonlocal prev
            if depth > 1:  # depth - 1's draft is x_{t+depth} at the drafting slot: written past the committed tokens;
                # a row that finished mid-block may sit past its budget, its drafts are never used: clamp them into the
                # last scratch column, which no output includes
                state.tokens[rows, (draft_col + depth - 1).clamp(max=state.tokens.size(1) - 1)] = drafts[:, -1]
            # x_{t+depth} for every window slot: committed tokens, or drafts written past them (scratch columns)
            col = (state.column(positions.clamp(min=0)) + depth).clamp(max=state.tokens.size(1) - 1)
            tokens = state.tokens.gather(1, col)
            tokens = torch.where(positions >= 0, tokens, self.trunk.pad_token_id)
            crop_cache(self.caches[depth - 1], start)
            prev = self.heads.depth_hidden(
                depth,
                h0,
                prev_hidden=prev,
                tokens=tokens,
                layer_kwargs=self.trunk.layer_kwargs_with_cache(window_kwargs, self.caches[depth - 1]),
            )
            return self.heads.depth_logits(depth, prev[rows, (state.last_slot - start).clamp(min=0)])

        self.valid[:num_drafts] = [S] * num_drafts  # the window's last entries are cut to `first_open` at the update
        self.drafted = True
        return self._chain(state, logits_of_depth, sampler, num_drafts)

    def plan_figure(self, mask, n_valid, done):
        """Per row, the first slot its next window needs. Depth i's entry at position t read x_{t+i} when it was
        computed: a draft if t + i passed the committed tokens then. The token at position n (just committed) may be
        the one that replaced a rejected draft, so entries with t + i >= n may have read a wrong token: positions
        <= n - D - 1 are final for every depth, the window starts past them (and so holds the drafting slot, n - 1).
        A finished row drafts no more and needs none (counting it would pin the window at the slot where it stopped,
        and the window would grow every round). Only after a round that drafted: a round without drafts computed no
        entry, and later rounds' first open slots only move right (unless a sliding window moves the slots)."""
        if not self.drafted and self.window is None:
            return None
        open_ = slot_positions(mask) > (n_valid - self.num_depths - 1)[:, None]
        return open_.float().argmax(1).long().masked_fill(done, mask.size(1))

    def settle_figure(self, state, first_open):
        # entries from the first open slot on were computed with drafts (or not at all): recomputed when next drafting
        self.drafted = False
        if first_open is not None:
            self.valid = [min(valid, min(first_open)) for valid in self.valid]
        self.forget_read_slots()


DRAFTERS = {
    "blockwise": PositionwiseDrafter,
    "medusa": PositionwiseDrafter,
    "parallel": ParallelDrafter,
    "sequential": SequentialDrafter,
}


def make_drafter(model, num_depths: int | None = None) -> Drafter:
    """The drafter of the model's head family, drafting with its first `num_depths` heads (default: all)."""
    return DRAFTERS[model.heads.head_type](model, num_depths)


# ----------------------------------------------------------------------------------------------------------------------
# verify and update
# ----------------------------------------------------------------------------------------------------------------------
def verify(model, state: DecodeState, inputs: torch.Tensor, inputs_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One base forward over `inputs` [B, n] appended to every row's slots (`inputs_mask` marks padding: the
    prompt's, and finished rows', whose positions must not grow); -> main-head logits [B, n, V]. Position ids
    continue each row's count of valid slots (padding gets 1, as in `generate`). The trunk hooks keep this forward's
    hidden states and last-layer kwargs for the drafter."""
    if inputs_mask is None:
        inputs_mask = torch.ones_like(inputs)
    inputs_mask = inputs_mask.long()
    state.mask = torch.cat([state.mask, inputs_mask], dim=1)
    position_ids = (state.n_valid[:, None] + inputs_mask.cumsum(1) - 1).masked_fill(inputs_mask == 0, 1)
    out = model.base_model(
        input_ids=inputs,
        attention_mask=state.mask,
        position_ids=position_ids,
        past_key_values=state.cache,
        use_cache=True,
    )
    return out.logits


def update_cache(
    model,
    state: DecodeState,
    drafter: Drafter,
    new_start: int,
    n_new: int,
    k: torch.Tensor,
    next_token: torch.Tensor,
    drafts: torch.Tensor,
    max_new_tokens: int,
    eos: torch.Tensor | None,
    verified: tuple[torch.Tensor, dict] | None = None,
):
    """Commit each active row's k drafts + next token (cut at EOS or max_new_tokens), crop the cache to the longest
    accepted row, turn the other rows' rejected slots into holes (moved before every later window when the cache has
    sliding-window layers), let the drafter follow. Everything is planned on the device and read back once (the
    round's one host read: accepted counts, kept slots, positions, finished rows, the drafter's own figure);
    -> the accepted counts k as Python ints (0 for rows finished before the round). `verified`: the new slots'
    (hidden states, last-layer kwargs) for the drafter when they are not the trunk's capture as it stands (a tree
    verify's accepted path, gathered into place)."""
    k = k.masked_fill(state.done, 0)  # finished rows keep nothing more
    # commit: block = d_1..d_k, next_token
    block = torch.cat([drafts, next_token[:, None]], dim=1).scatter(1, k[:, None], next_token[:, None])
    length = torch.minimum(k + 1, max_new_tokens - state.generated)
    offsets = torch.arange(block.size(1), device=k.device)
    in_block = (offsets[None] < length[:, None]) & ~state.done[:, None]
    if eos is not None:
        is_eos = torch.isin(block, eos) & in_block
        first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), block.size(1))
        in_block &= offsets[None] <= first_eos[:, None]
    # written columns lie before the scratch room's last column; others rewrite what they hold
    cols = (state.prompt_len + state.generated[:, None] + offsets[None]).clamp(max=state.tokens.size(1) - 1)
    state.tokens.scatter_(1, cols, torch.where(in_block, block, state.tokens.gather(1, cols)))
    state.generated = state.generated + in_block.sum(1)
    finished = state.generated >= max_new_tokens
    if eos is not None:
        finished |= is_eos.any(1)
    # cache: slots new_start .. new_start + n_new - 1 were verified; row r keeps its first (n_new - D) + k_r of them
    # (the prefix before the drafts, then the accepted drafts); the cache keeps the longest row, others get holes
    kept = (n_new - drafts.size(1) + k).masked_fill(state.done, 0)  # a finished row's positions stop growing
    update = SlotUpdate.plan(new_start, kept, state.window)
    rejected = torch.arange(n_new, device=k.device)[None] >= kept[:, None]
    state.n_valid = state.n_valid + state.mask[:, new_start:].masked_fill(rejected, 0).sum(1)  # padding: no position
    mask = update.move_mask(state.mask)  # not cut yet: slots past the longest row are off in every row
    done = state.done | finished
    figure = drafter.plan_figure(mask, state.n_valid, done)
    read = torch.stack([k, kept, state.n_valid, done.long()] + ([] if figure is None else [figure])).tolist()
    k_host, kept_host, state.n_valid_host, done_host = read[:4]
    update.settle(kept_host)
    state.mask = mask[:, : update.keep]
    update.move_cache(state.cache)
    state.last_slot = update.last_slot
    # the next input of each row is its last committed token (position n_valid); scratch room holds its drafts; a
    # finished row's last committed token sits there: leave it
    col = state.column(state.n_valid)[:, None]
    state.tokens.scatter_(1, col, torch.where(state.done[:, None], state.tokens.gather(1, col), next_token[:, None]))
    hidden, layer_kwargs = verified or (model.trunk.hidden, model.trunk.layer_call_kwargs())
    drafter.observe(state, hidden, layer_kwargs, update)
    state.done, state.done_host = done, [bool(d) for d in done_host]
    drafter.settle_figure(state, None if figure is None else read[4])
    return k_host


# ----------------------------------------------------------------------------------------------------------------------
# acceptance statistics
# ----------------------------------------------------------------------------------------------------------------------
def acceptance_summary(counts: dict) -> dict:
    """Mean accepted length, acceptance by position and by depth from a decode's raw `counts` (`speculative_generate`'s
    `stats["counts"]`): every verify round of every active row weighs the same."""
    verify_rounds = counts["verify_rounds"]
    kept, verified = counts["kept_by_position"], counts["verified_by_position"]
    return {
        "mean_accepted_length": counts["tokens_uncut"] / counts["row_rounds"],
        "acceptance_by_position": [c / verify_rounds if verify_rounds else 0.0 for c in kept],
        "acceptance_by_depth": [c / v if v else 0.0 for c, v in zip(kept, verified)],
    }


def pool_acceptance(stats: list[dict]) -> dict:
    """`acceptance_summary` of several `speculative_generate` calls at once (their counts summed): the pooled figure
    over prompts and batches, not a mean of per-call means."""
    depths = {len(s["counts"]["kept_by_position"]) for s in stats}
    if len(depths) != 1:
        raise ValueError(f"pool_acceptance needs calls that drafted the same number of tokens, got {sorted(depths)}")
    total = {key: sum(s["counts"][key] for s in stats) for key in ("row_rounds", "tokens_uncut", "verify_rounds")}
    for key in ("kept_by_position", "verified_by_position"):
        total[key] = [sum(column) for column in zip(*(s["counts"][key] for s in stats))]
    return acceptance_summary(total)


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------
def drafts_that_fit(state: DecodeState, num_drafts: int, max_positions: int | None) -> int:
    """Drafts the next verify may take: it feeds each active row's positions n .. n + drafts, and no position may pass
    the model's last one (GPT-2's learned positions end there; `generate` feeds one position per step)."""
    if max_positions is None:
        return num_drafts
    furthest = max(n for n, done in zip(state.n_valid_host, state.done_host) if not done)
    return max(0, min(num_drafts, max_positions - 1 - furthest))


@torch.no_grad()
def speculative_generate(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    return_stats: bool = True,
    generator: torch.Generator | None = None,
    num_draft_tokens: int | None = None,
    generation_config=None,
    adaptive_draft_tokens: bool | DraftPlanner = False,
    tree=None,
    drafter_factory=None,
    **generation_kwargs,
):
    """Generate with the model's own MTP heads as drafters: output identical to `model.base_model.generate` with the
    same settings (greedy: token for token; sampling: in distribution), in fewer base forwards.

    `model`: an `MTPForCausalLM`. `input_ids` [B, T], left-padded when rows differ in length (`attention_mask` marks
    real tokens). Generation settings as in `generate`: the base's generation config (or `generation_config`),
    updated by `do_sample`, `temperature`, `top_k`, `top_p`, `eos_token_id`, `pad_token_id` (None: not given) and by
    `generation_kwargs` (any generation config field: repetition_penalty, min_p, no_repeat_ngram_size,
    min_new_tokens, bad_words_ids, ...); transformers' defaults fill the rest, top_k = 50 among them (top_k=0 samples
    the full distribution). Settings whose processor cannot be applied position by position raise a ValueError.
    Returns `(sequences, stats)`: sequences [B, T + longest generation] as `generate` lays them out (prompt
    included, rows that finished early padded with the pad token). `num_draft_tokens` (0..D, default D) drafts with
    the first heads only (Stern's window k = num_draft_tokens + 1; 0 is plain decoding); the output is the same for
    every value. `adaptive_draft_tokens`: each round drafts 0..num_draft_tokens tokens, as many as maximise expected
    tokens per second from running per-depth acceptance and measured round times at the current batch size
    (`trl_mtp.adaptive_drafting`); True starts a fresh `DraftPlanner`, a planner passed in carries its estimates
    across calls. Lossless for every choice: the output is the same. `tree`: a `trl_mtp.tree_drafts.TreeDraft`:
    each round verifies a tree of candidates (the heads' top-k per depth, or draws from their q when sampling;
    optionally prompt-lookup n-grams) in one forward instead of one chain (batch 1, blockwise / medusa / parallel
    heads); `draft_tokens` then counts tree nodes. `drafter_factory` (benchmarks): build the drafter with this
    `(model, num_depths) -> Drafter` instead of `make_drafter`.
    Stats (None unless `return_stats`):
      - `forwards`: base forwards (the prefill counts: it yields the first token);
      - `mean_accepted_length`: tokens committed per base forward per active row (1.0 for plain decoding, at most
        D + 1), before cuts at EOS / max_new_tokens;
      - `acceptance_by_position`: [D], fraction of verify rounds (of active rows) in which drafts 1..i were all kept;
      - `drafted`, `accepted`: draft tokens verified / kept (active rows); `new_tokens`: tokens returned (no padding);
      - `wall_time_s`, `tokens_per_s` (new tokens of all rows per second), `accepted_per_round` (per round, per row,
        -1 for finished rows);
      - `draft_tokens`: drafts per verify round, mean over rounds; `draft_tokens_per_round`: per round;
      - `acceptance_by_depth`: [D], per depth i, the fraction of rows whose draft i was verified (drafts 1..i-1 kept)
        that kept it (what the adaptive planner estimates; equal to the ratios of `acceptance_by_position` when
        every round drafts D);
      - `counts`: the raw counts behind the acceptance figures; `pool_acceptance` pools several calls' stats.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # duck-typed: importing trl_mtp.tree_drafts here would be a cycle (it builds on this module)
    if tree is not None and not (callable(getattr(tree, "check", None)) and callable(getattr(tree, "round", None))):
        raise ValueError(f"tree must be a trl_mtp.tree_drafts.TreeDraft or None, got {tree!r}")
    base = model.base_model
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    config, processors = generation_settings(
        base,
        input_ids,
        attention_mask,
        max_new_tokens,
        generation_config,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **generation_kwargs,
    )
    eos = config._eos_token_tensor
    pad_token_id = 0 if config._pad_token_tensor is None else int(config._pad_token_tensor)
    sampler = Sampler(processors, bool(config.do_sample), generator)
    accept = accept_sampled if sampler.do_sample else accept_greedy
    B, T = input_ids.shape
    D = model.heads.num_depths if num_draft_tokens is None else num_draft_tokens
    if isinstance(D, bool) or not isinstance(D, int) or not 0 <= D <= model.heads.num_depths:
        raise ValueError(
            f"num_draft_tokens must be an integer in 0..{model.heads.num_depths}, got {num_draft_tokens!r}"
        )
    max_positions = getattr(base.config.get_text_config(decoder=True), "max_position_embeddings", None)
    planner = adaptive_draft_tokens
    if planner is True:
        planner = DraftPlanner(D)
    elif planner is False or planner is None:
        planner = None
    elif not isinstance(planner, DraftPlanner):
        raise ValueError(f"adaptive_draft_tokens must be a bool or a DraftPlanner, got {adaptive_draft_tokens!r}")
    elif planner.max_drafts > D:
        raise ValueError(f"the planner drafts up to {planner.max_drafts} tokens, more than num_draft_tokens = {D}")
    start_time = time.perf_counter()

    cache = new_cache(base.config)
    tokens = torch.cat([input_ids, input_ids.new_full((B, max_new_tokens + D + 2), pad_token_id)], dim=1)
    state = DecodeState(
        tokens=tokens,
        prompt_len=T,
        pad_len=T - attention_mask.long().sum(1),
        mask=attention_mask.long()[:, :0],
        n_valid=torch.zeros(B, dtype=torch.long, device=device),
        generated=torch.zeros(B, dtype=torch.long, device=device),
        done=torch.zeros(B, dtype=torch.bool, device=device),
        cache=cache,
        window=cache_window(cache),
        output_tokens=tokens.clone(),
        output_generated=torch.zeros(B, dtype=torch.long, device=device),
        rows=list(range(B)),
        row_index=torch.arange(B, device=device),
    )
    drafter = (drafter_factory or make_drafter)(model, D)
    if tree is not None:
        tree.check(model, state, drafter, planner)
    was_training = model.training
    model.eval()
    forwards, accepted_rounds = 0, []
    # row_rounds: (row, round) pairs, prefill included; tokens_uncut: tokens they committed before cuts at EOS /
    # max_new_tokens; verify_rounds: those after the prefill; kept_by_position[i]: those that kept drafts 1..i+1
    # verified_by_position[i]: those whose draft i+1 was verified (drafts 1..i kept)
    counts = {
        "row_rounds": 0,
        "tokens_uncut": 0,
        "verify_rounds": 0,
        "kept_by_position": [0] * D,
        "verified_by_position": [0] * D,
        "drafted": 0,
    }
    draft_tokens = []
    try:
        # prefill: a verify of the prompt with no drafts, whose slots are all kept
        no_drafts = input_ids.new_zeros(B, 0)
        logits = verify(model, state, input_ids, attention_mask)[:, -1:]
        k, next_token = accept(sampler.scores(state, logits, no_drafts), no_drafts, sampler, None)
        update_cache(model, state, drafter, 0, T, k, next_token, no_drafts, max_new_tokens, eos)
        forwards, counts["row_rounds"], counts["tokens_uncut"] = 1, B, B
        state.drop_finished(drafter)
        while not all(state.done_host):  # every row in the batch is live: finished ones left it
            round_start = time.perf_counter()
            b = len(state.rows)
            n = drafts_that_fit(state, D, max_positions)
            n = n if planner is None else planner.choose(b, n)  # choose
            if tree is None:
                no_drafts = input_ids.new_zeros(b, 0)
                drafts, draft_probs = drafter.propose(state, sampler, n) if n else (no_drafts, None)  # propose
                last = state.tokens[torch.arange(b, device=device), state.column(state.n_valid)]
                new_start = state.mask.size(1)
                logits = verify(model, state, torch.cat([last[:, None], drafts], dim=1))  # verify
                scores = sampler.scores(state, logits, drafts)  # process
                k, next_token = accept(scores, drafts, sampler, draft_probs)  # accept
                k = update_cache(
                    model, state, drafter, new_start, n + 1, k, next_token, drafts, max_new_tokens, eos
                )  # update
                nodes = n
            else:  # the same stages over a tree of candidates up to n deep
                k, nodes = tree.round(model, state, drafter, sampler, n, max_new_tokens, eos, max_positions)
            if planner is not None:
                planner.observe(b, n, time.perf_counter() - round_start, k)  # observe
            forwards += 1
            draft_tokens.append(nodes)
            accepted = [-1] * B
            for row, kr in zip(state.rows, k):
                accepted[row] = kr
            accepted_rounds.append(accepted)
            counts["row_rounds"] += b
            counts["verify_rounds"] += b
            counts["tokens_uncut"] += sum(k) + b
            counts["drafted"] += nodes * b
            for i in range(n):
                counts["kept_by_position"][i] += sum(kr > i for kr in k)
                counts["verified_by_position"][i] += sum(kr >= i for kr in k)
            state.drop_finished(drafter)
    finally:
        model.train(was_training)
        model.trunk.clear()

    state.flush()
    generated = state.output_generated
    length = int(generated.max())
    sequences = state.output_tokens[:, : T + length].clone()
    sequences[:, T:][torch.arange(length, device=device)[None] >= generated[:, None]] = pad_token_id
    if not return_stats:
        return sequences, None
    wall = time.perf_counter() - start_time
    new_tokens = int(generated.sum())
    stats = {
        "forwards": forwards,
        **acceptance_summary(counts),
        "drafted": counts["drafted"],
        "accepted": sum(counts["kept_by_position"]),
        "new_tokens": new_tokens,
        "wall_time_s": wall,
        "tokens_per_s": new_tokens / wall if wall > 0 else float("inf"),
        "accepted_per_round": accepted_rounds,
        "draft_tokens": sum(draft_tokens) / len(draft_tokens) if draft_tokens else 0.0,
        "draft_tokens_per_round": draft_tokens,
        "counts": counts,
    }
    return sequences, stats
