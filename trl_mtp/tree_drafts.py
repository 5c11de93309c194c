"""Tree drafts for self-speculative decoding: many candidate continuations verified in ONE base forward, lossless.

A chain round verifies one guess per depth; a tree round verifies several. The heads of a positionwise family
(blockwise, medusa, parallel) give, from the last verified position alone, a distribution per depth; a node's
token is one of its depth's top-k, named by its ranks from the root, e.g. (0, 1) = depth 1's best, then depth 2's
second (Medusa's sparse trees, Cai et al. 2024). With `lookup_ngram`, the continuation of the text's last n-gram at
its earliest occurrence in the prompt and the text so far (prompt lookup, `lookup_tokens` deep: deeper than the
heads if asked) joins the tree too: the hybrid of heads and prompt lookup. Equal prefixes are one node (a trie), so
each node is one token with one parent.

Verify: one forward over [x, node_1 .. node_N] (x the last committed token, the root) with a 4-D attention mask
in which each node sees the cache and its ancestors (and itself) only, and position ids n + depth, so a node's
main-head logits are those the base computes after the committed tokens and that node's path (`tree_attention`).

Accept, walking from the root:
- greedy: move to the child whose token is the main head's argmax at the current node while there is one; the
  next token is the argmax at the last node reached. Each step is the base's own greedy choice: the output is
  `generate`'s, token for token.
- sampling: at a node with children c_1..c_m (distinct tokens), multi-draft rejection sampling (SpecInfer, Miao
  et al. 2024; EAGLE's multi-round speculative sampling; recursive rejection sampling without replacement, Jeon
  et al. 2024), with q_i the distribution candidate i was drawn from given the candidates before it:

      r_1 = p                                       (p: the base's processed distribution at the node)
      accept c_i with probability min(1, r_i(c_i) / q_i(c_i))
      on rejection r_{i+1} = norm(max(r_i - q_i, 0))
      all rejected: the token is drawn from r_{m+1}

  Step i alone is speculative sampling of target r_i from proposal q_i: it emits c_i with probability
  q_i(x) min(1, r_i(x)/q_i(x)) = min(q_i(x), r_i(x)) and otherwise something distributed as r_{i+1}, which is
  norm(r_i - min(q_i, r_i)), so in all r_i(x), whatever q_i, given that r_{i+1}'s own steps emit r_{i+1}
  (induction from the last step, which draws r_{m+1} itself). So the node emits p.
  Children drawn from the heads' q (`sample_children`), one by one without replacement: q_i = q without
  c_1..c_{i-1}, renormalised. Deterministic children (top-k ranks, the lookup path): q_i = delta(c_i), so

      accept c_i with probability r_i(c_i); on rejection r_{i+1} = r_i with c_i zeroed, renormalised.

  Law (deterministic, directly): P(c_1) = p(c_1). If c_1..c_{i-1} were rejected, which happens with probability
  prod_{j<i} (1 - r_j(c_j)) = 1 - sum_{j<i} p(c_j) (induction: r_i = p restricted to the tokens not yet
  rejected, divided by their mass), then P(c_i) = (1 - sum_{j<i} p(c_j)) * p(c_i) / (1 - sum_{j<i} p(c_j))
  = p(c_i); and a token x outside the children comes from r_{m+1} = p / (1 - sum_j p(c_j)) on the rest, after
  all were rejected (probability 1 - sum_j p(c_j)): P(x) = p(x). (Equivalently: draw y ~ p at the node and
  descend when y is a child; a node keeps a child with probability sum_i p(c_i), its children's mass under the
  base, where a sampled chain keeps its draft with probability sum_x min(p(x), q(x)).) Moving to the accepted
  child, the same holds at the next node with the base's p there (its logits, computed after that path), so the
  committed block is distributed as the base's samples. Typical acceptance (Medusa) is not lossless and is not
  used; rules that skip the residual update are not lossless either: tests show they fail.

Update: the accepted path's key / value slots are gathered into place after the cache's past slots and the rest
cropped (`keep_path`), the drafter sees the path's hidden states and layer inputs as a chain verify's, and
`trl_mtp.decoding.update_cache` commits the block as for a chain (EOS and max_new_tokens cut it).

Limits (each refused with a one-line ValueError): batch 1; head families whose depth i reads the draft of depth
i - 1 (sequential): their tree would need one head pass per node; attention other than sdpa and eager (the custom
4-D mask); sliding-window layers (the mask would hold the full past); adaptive drafting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trl_mtp.decoding import (
    POSITION_FREE,
    WINDOW_MASK_ATTENTION,
    DecodeState,
    Drafter,
    Sampler,
    attention_mask_for,
    crop_cache,
    drafts_that_fit,
    update_cache,
)

# rank paths in priority order (parents first): a sparse tree takes the first `size` that fit the depth
DEFAULT_CHOICES = (
    (0,),
    (0, 0),
    (1,),
    (0, 0, 0),
    (0, 1),
    (2,),
    (1, 0),
    (0, 0, 0, 0),
    (0, 0, 1),
    (0, 2),
    (0, 1, 0),
    (3,),
    (1, 1),
    (2, 0),
    (0, 0, 0, 1),
    (0, 0, 2),
    (1, 0, 0),
    (0, 0, 0, 0, 0),
    (0, 3),
    (0, 0, 1, 0),
)
PER_POSITION = ("position_ids", "position_embeddings", "cache_position")  # layer inputs given per slot


# ----------------------------------------------------------------------------------------------------------------------
# the tree
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Tree:
    """A token trie rooted at the last committed token. Slot 0 is the root; slot s > 0 holds `tokens[s]` with parent
    `parents[s]` at depth `depths[s]`; parents come before their children."""

    tokens: list[int] = field(default_factory=lambda: [-1])
    parents: list[int] = field(default_factory=lambda: [-1])
    depths: list[int] = field(default_factory=lambda: [0])
    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    # sampled children: per slot, the distribution q its first `sampled[s]` children were drawn from, without
    # replacement and in that order (the rest are deterministic: point masses)
    proposals: dict[int, torch.Tensor] = field(default_factory=dict)
    sampled: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Candidate nodes (the root excluded)."""
        return len(self.tokens) - 1

    def add_path(self, path: list[int], limit: int) -> None:
        """Merge a token path from the root, adding at most `limit` nodes in all (a path stops where the tree is
        full)."""
        slot = 0
        for token in path:
            if token not in self.children[slot]:
                if self.size >= limit:
                    return
                self.tokens.append(token)
                self.parents.append(slot)
                self.depths.append(self.depths[slot] + 1)
                self.children.append({})
                self.children[slot][token] = len(self.tokens) - 1
            slot = self.children[slot][token]

    def add_sampled(self, slot: int, q: torch.Tensor, tokens: list[int]) -> None:
        """Children `tokens` of a slot without children yet, drawn from q [V] without replacement in this order."""
        for token in tokens:
            self.add_path([*(self.tokens[s] for s in self.path_to(slot)), token], limit=len(self.tokens))
        self.proposals[slot], self.sampled[slot] = q, len(tokens)

    def path_to(self, slot: int) -> list[int]:
        """Slots from depth 1 down to `slot` (empty for the root)."""
        path = []
        while slot > 0:
            path.append(slot)
            slot = self.parents[slot]
        return path[::-1]

    def ancestors(self) -> torch.Tensor:
        """[N+1, N+1] bool: entry (s, a) when a is s or an ancestor of s (the root is everyone's)."""
        n = len(self.tokens)
        allowed = torch.eye(n, dtype=torch.bool)
        for slot in range(1, n):
            allowed[slot] |= allowed[self.parents[slot]]
        return allowed


def head_paths(depth_logits: torch.Tensor, choices) -> list[list[int]]:
    """Token paths of the rank paths `choices` from the heads' logits [n, V] of depths 1..n (choices deeper than n
    are skipped). Ranks order the raw logits: temperature, top-k and top-p keep that order."""
    depth = depth_logits.size(0)
    choices = [c for c in choices if len(c) <= depth]
    if not choices:
        return []
    width = 1 + max(max(c) for c in choices)
    top = depth_logits.topk(min(width, depth_logits.size(-1)), dim=-1).indices.tolist()
    return [[top[d][r] for d, r in enumerate(c)] for c in choices if max(c) < len(top[0])]


def lookup_path(tokens: list[int], max_ngram: int, length: int) -> list[int]:
    """Prompt lookup: the `length` tokens that followed the earliest earlier occurrence of the text's last n-gram,
    n from `max_ngram` down to 1 (as transformers' prompt lookup); [] when nothing matches."""
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n):
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + length]
    return []


def tree_attention(tree: Tree, past: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The verify's 4-D mask [1, 1, N+1, S+N+1]: every slot of the tree sees the valid past slots (`past` [1, S]) and
    its ancestors and itself among the tree's slots."""
    ancestors = tree.ancestors().to(past.device)
    allowed = torch.cat([past.bool()[:, None, :].expand(1, ancestors.size(0), -1), ancestors[None]], dim=-1)
    return attention_mask_for(allowed[:, None], attn_implementation, dtype)


# ----------------------------------------------------------------------------------------------------------------------
# accept
# ----------------------------------------------------------------------------------------------------------------------
def candidate_acceptance(
    p: torch.Tensor, candidates: list[int], q: torch.Tensor | None = None, sampled: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-draft rejection (see the module docstring): p [V], distinct candidates, the first `sampled` of them
    drawn from q [V] without replacement, the rest deterministic -> (a [m]: probability of accepting candidate i
    once 1..i-1 were rejected, residual [V]: the law of the token drawn when all were rejected). Candidate i's
    proposal q_i is q without the sampled candidates before it, renormalised, or the point mass at c_i."""
    residual = p.clone()
    accept = []
    for i, token in enumerate(candidates):
        if i < sampled:
            q_i = q.clone()
            q_i[candidates[:i]] = 0
            q_i = q_i / q_i.sum()
        else:
            q_i = torch.zeros_like(p)
            q_i[token] = 1
        accept.append((residual[token] / q_i[token]).clamp(max=1))
        previous, residual = residual, (residual - q_i).clamp(min=0)  # norm(max(r - q_i, 0)); a point mass zeroes c_i
        mass = residual.sum()
        if mass == 0:
            # r <= q_i everywhere, so r = q_i up to rounding and a rejection has probability 1 - sum min(r, q_i) = 0
            # exactly: what it draws does not change the law. Draw r without c_i (c_i's mass r(c_i) was all emitted
            # by accepting it), which spreads the rounding leftover in r's proportions and is the exact residual of
            # a point-mass candidate; a zero residual would make the draw raise.
            residual = previous.clone()
            residual[token] = 0
            mass = residual.sum()
        residual = residual / mass if mass > 0 else residual
    return torch.stack(accept) if accept else p.new_zeros(0), residual


def node_scores(sampler: Sampler, state: DecodeState, logits: torch.Tensor, tree: Tree) -> torch.Tensor:
    """Processed scores [1, N+1, V] at the tree's slots, each after its own path (prefix processors see the
    committed tokens, then the path's tokens)."""
    none = state.tokens.new_zeros(1, 0)
    if all(type(p) in POSITION_FREE for p in sampler.processors):
        return sampler.scores(state, logits, none)
    per_slot = []
    for slot in range(tree.size + 1):
        path = none.new_tensor([tree.tokens[s] for s in tree.path_to(slot)])[None]
        per_slot.append(sampler.scores(state, logits[:, slot : slot + 1], path, first=path.size(1)))
    return torch.cat(per_slot, dim=1)


def walk_greedy(tree: Tree, scores: torch.Tensor, sampler: Sampler) -> tuple[list[int], int]:
    """scores [N+1, V] at the tree's slots -> (accepted slots, next token): follow the argmax while it is a child."""
    target = scores.argmax(-1).tolist()
    slot, path = 0, []
    while target[slot] in tree.children[slot]:
        slot = tree.children[slot][target[slot]]
        path.append(slot)
    return path, target[slot]


def walk_sampled(tree: Tree, scores: torch.Tensor, sampler: Sampler) -> tuple[list[int], int]:
    """scores [N+1, V] -> (accepted slots, next token) by `candidate_acceptance` at each node from the root."""
    probs = scores.softmax(-1)
    slot, path = 0, []
    while True:
        candidates = list(tree.children[slot])
        accept, residual = candidate_acceptance(
            probs[slot], candidates, tree.proposals.get(slot), tree.sampled.get(slot, 0)
        )
        u = torch.rand(len(candidates), generator=sampler.generator, dtype=probs.dtype, device=probs.device)
        kept = (u < accept).tolist()
        if True not in kept:
            return path, int(sampler.sample(residual[None])[0])
        slot = tree.children[slot][candidates[kept.index(True)]]
        path.append(slot)


# ----------------------------------------------------------------------------------------------------------------------
# update: keep the accepted path only
# ----------------------------------------------------------------------------------------------------------------------
def keep_path(cache, new_start: int, keep: list[int]) -> None:
    """The tree's slots `keep` (offsets from `new_start`, root first) moved to new_start, new_start + 1, ..., and
    the cache cropped after them."""
    index = torch.tensor(keep)
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and layer.keys.numel():
            source = (new_start + index).to(layer.keys.device)
            layer.keys[:, :, new_start : new_start + len(keep)] = layer.keys.index_select(2, source)
            layer.values[:, :, new_start : new_start + len(keep)] = layer.values.index_select(2, source)
    crop_cache(cache, new_start + len(keep))


def path_layer_kwargs(layer_kwargs: dict, keep: list[int]) -> dict:
    """The last layer's call kwargs of a tree verify cut to the accepted path as a chain verify of it would have
    them: per-position inputs at the kept slots (cache positions: the first ones, now contiguous), the mask's kept
    queries over the past and the kept keys (a chain's causal mask, since the path's ancestors are the path)."""
    kwargs = dict(layer_kwargs)
    n = len(keep)
    for name in PER_POSITION:
        value = kwargs.get(name)
        if name == "cache_position" and value is not None:
            kwargs[name] = value[..., :n]
        elif isinstance(value, (tuple, list)):
            kwargs[name] = tuple(v[..., keep, :] for v in value)
        elif value is not None:
            kwargs[name] = value[..., keep]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        nodes = mask.size(-2)
        past = mask.size(-1) - nodes
        columns = list(range(past)) + [past + s for s in keep]
        kwargs["attention_mask"] = mask[..., keep, :][..., columns]
    return kwargs


def is_count(value, minimum: int = 1) -> bool:
    """An int (not a bool) >= minimum."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# ----------------------------------------------------------------------------------------------------------------------
# a round
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class TreeDraft:
    """Tree drafts for `speculative_generate(..., tree=TreeDraft(...))`: each round at most `size` nodes from the
    heads' top-k per depth (`choices`: rank paths in priority order, parents first; default `DEFAULT_CHOICES`), plus,
    with `lookup_ngram` > 0, the prompt-lookup continuation (n-grams up to that size matched in the prompt and the
    text so far; up to `lookup_tokens` more nodes, default D: a lookup path may go deeper than the heads). When
    sampling, the heads' nodes are drawn instead (`sample_children`, default (3, 1, 1, 1); None: the top-k tree):
    each node at depth d - 1 gets `sample_children[d - 1]` children drawn from the heads' processed q_d after its
    path, without replacement (SpecInfer / recursive rejection sampling; the chain is (1, 1, ..., 1)), at most
    `size` nodes, breadth first. Measured, sampled children keep more than top-k ones under sampling (the docs)."""

    size: int = 12
    choices: tuple = DEFAULT_CHOICES
    lookup_ngram: int = 0
    lookup_tokens: int | None = None
    sample_children: tuple | None = (3, 1, 1, 1)

    def __post_init__(self):
        if not is_count(self.size):
            raise ValueError(f"tree size must be an integer >= 1, got {self.size!r}")
        if not is_count(self.lookup_ngram, minimum=0):
            raise ValueError(f"lookup_ngram must be an integer >= 0, got {self.lookup_ngram!r}")
        if self.lookup_tokens is not None and not is_count(self.lookup_tokens):
            raise ValueError(f"lookup_tokens must be an integer >= 1 or None, got {self.lookup_tokens!r}")
        if self.sample_children is not None and (
            not isinstance(self.sample_children, (tuple, list))
            or not self.sample_children
            or not all(is_count(b) for b in self.sample_children)
        ):
            raise ValueError(f"sample_children must be integers >= 1 per depth, got {self.sample_children!r}")
        if not isinstance(self.choices, (tuple, list)) or not all(isinstance(c, (tuple, list)) for c in self.choices):
            raise ValueError(f"tree choices must be a sequence of rank paths (tuples of ints), got {self.choices!r}")
        self.choices = tuple(tuple(choice) for choice in self.choices)  # lists accepted: the trie keys on tuples
        seen = {()}
        for choice in self.choices:
            if not choice or choice[:-1] not in seen or not all(is_count(r, minimum=0) for r in choice):
                raise ValueError(
                    f"tree choices must be non-empty rank paths of integers >= 0 listed after their parents, "
                    f"got {choice!r}"
                )
            seen.add(choice)

    def check(self, model, state: DecodeState, drafter: Drafter, planner) -> None:
        """Refuse what a tree round cannot do (one line each)."""
        if state.tokens.size(0) != 1:
            raise ValueError(f"tree drafts decode one sequence at a time, got a batch of {state.tokens.size(0)}")
        if type(drafter).depth_logits is Drafter.depth_logits:
            raise ValueError(
                f"tree drafts need heads whose depths all read the last verified position; the "
                f"{model.heads.head_type!r} family chains its depths"
            )
        attn = model.base_model.config._attn_implementation
        if attn not in WINDOW_MASK_ATTENTION:
            raise ValueError(f"tree drafts need sdpa or eager attention (a custom 4-D mask), got {attn!r}")
        if state.window is not None:
            raise ValueError(f"tree drafts do not support sliding-window layers (window {state.window})")
        if planner is not None:
            raise ValueError("tree drafts do not combine with adaptive_draft_tokens")

    def build(self, state: DecodeState, drafter: Drafter, sampler: Sampler, depth: int, lookup_depth: int) -> Tree:
        """The round's tree: the heads' nodes at most `depth` deep, the lookup path at most `lookup_depth`."""
        tree = Tree()
        if depth:
            logits = drafter.depth_logits(state, depth)
            if sampler.do_sample and self.sample_children:
                self.sample_nodes(tree, state, sampler, logits)
            else:
                for path in head_paths(logits[0], self.choices):
                    tree.add_path(path, self.size)
        if self.lookup_ngram and lookup_depth:
            start = int(state.pad_len[0])
            text = state.tokens[0, start : start + state.n_valid_host[0] + 1].tolist()  # the prompt and committed
            tree.add_path(lookup_path(text, self.lookup_ngram, lookup_depth), tree.size + lookup_depth)
        return tree

    def sample_nodes(self, tree: Tree, state: DecodeState, sampler: Sampler, logits: torch.Tensor) -> None:
        """Breadth first: each node's children drawn one by one from q_d after its path (processed as the chain's
        drafts), each draw without the ones before; `logits` [1, depth, V] of the heads."""
        frontier = [0]
        for d in range(min(logits.size(1), len(self.sample_children))):
            next_frontier = []
            for slot in frontier:
                path = state.tokens.new_tensor([tree.tokens[s] for s in tree.path_to(slot)])[None]
                q = sampler.scores(state, logits[:, d : d + 1], path, first=path.size(1))[0, 0].softmax(-1)
                remaining, tokens = q.clone(), []
                for _ in range(min(self.sample_children[d], self.size - tree.size, int((q > 0).sum()))):
                    tokens.append(int(sampler.sample((remaining / remaining.sum())[None])[0]))
                    remaining[tokens[-1]] = 0
                tree.add_sampled(slot, q, tokens)
                next_frontier += [tree.children[slot][t] for t in tokens]
            frontier = next_frontier

    def round(
        self,
        model,
        state: DecodeState,
        drafter: Drafter,
        sampler: Sampler,
        depth: int,
        max_new_tokens,
        eos,
        max_positions,
    ):
        """propose (build the tree) -> verify (one forward) -> accept (walk) -> update (keep the path); -> (accepted
        counts as Python ints, nodes verified). `max_positions`: the base's position limit (None: none), read once
        by `speculative_generate`."""
        base = model.base_model
        lookup_depth = depth
        if self.lookup_tokens is not None:  # past the heads' depth: within the token budget (the scratch room is D)
            lookup_depth = drafts_that_fit(state, self.lookup_tokens, max_positions)
            lookup_depth = max(depth, min(lookup_depth, max_new_tokens - int(state.generated[0])))
        tree = self.build(state, drafter, sampler, depth, lookup_depth)
        device = state.tokens.device
        last = state.tokens[0, state.column(state.n_valid)[0]]
        inputs = torch.cat([last[None], torch.tensor(tree.tokens[1:], device=device, dtype=last.dtype)])[None]
        new_start = state.mask.size(1)
        mask = tree_attention(tree, state.mask, base.config._attn_implementation, base.dtype)
        state.mask = torch.cat([state.mask, state.mask.new_ones(1, tree.size + 1)], dim=1)
        logits = base(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=state.n_valid[:, None] + torch.tensor(tree.depths, device=device)[None],
            past_key_values=state.cache,
            use_cache=True,
        ).logits
        scores = node_scores(sampler, state, logits, tree)[0]
        path, next_token = (walk_sampled if sampler.do_sample else walk_greedy)(tree, scores, sampler)
        keep = [0] + path
        keep_path(state.cache, new_start, keep)
        state.mask = state.mask[:, : new_start + len(keep)]
        # the drafter reads the path as a chain verify's: its hidden states, and (parallel heads, which run the last
        # layer over kept slots) its per-slot layer inputs and the mask of its first queries (`catch_up` reuses them)
        hidden = model.trunk.hidden.index_select(1, torch.tensor(keep, device=device))
        layer_kwargs = path_layer_kwargs(model.trunk.layer_call_kwargs(), keep)
        drafts = torch.tensor([[tree.tokens[s] for s in path]], device=device, dtype=state.tokens.dtype)
        k = update_cache(
            model,
            state,
            drafter,
            new_start,
            len(keep),
            torch.tensor([len(path)], device=device),
            torch.tensor([next_token], device=device, dtype=state.tokens.dtype),
            drafts,
            max_new_tokens,
            eos,
            verified=(hidden, layer_kwargs),
        )
        return k, tree.size
