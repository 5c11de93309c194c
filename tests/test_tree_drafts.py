"""Tree drafts (`trl_mtp.tree_drafts`): lossless under greedy decoding and sampling, one forward per round.

Greedy: output identical to `generate` (float64, as tests/test_decoding.py), for every family that takes trees,
accepting and rejecting heads, other architectures, the prompt-lookup hybrid, EOS; keeping the tree's first slots
instead of the accepted path, or a mask that lets a node see its siblings, fails it. Sampling: the per-node rule
(multi-draft rejection with point-mass proposals) and a two-level tree's law are exact by enumeration, where the rule
without the residual update is not; end to end, chi-square of the first tokens against the law enumerated from the
base (slow). The tree mask is checked on a hand-worked 4-node tree; bad input gets a one-line ValueError."""

from __future__ import annotations

import itertools

import pytest
import torch
from decoding_models import PAD, make_model, random_batch, reference
from test_decoding_sampling import exact_marginals, marginal_pvalues, random_conditionals, sampling_model

import trl_mtp.tree_drafts as tree_drafts
from trl_mtp.decoding import speculative_generate
from trl_mtp.tree_drafts import Tree, TreeDraft, candidate_acceptance, lookup_path, tree_attention

TREE_FAMILIES = ["blockwise", "medusa", "parallel"]


def tree_decode(model, ids, mask=None, max_new_tokens=20, tree=None, eos=None, **settings):
    return speculative_generate(
        model,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=[] if eos is None else eos,
        pad_token_id=PAD,
        tree=TreeDraft() if tree is None else tree,
        **settings,
    )


def mismatches(model, prompts=range(4), max_new_tokens=20, tree=None, eos=None, **settings) -> int:
    """Prompts (random_batch seeds, batch 1) whose greedy tree decode differs from `generate`'s under `settings`."""
    bad = 0
    for seed in prompts:
        ids, mask = random_batch(seed, 1, max_len=8 + seed)
        ref = reference(model, ids, mask, max_new_tokens, eos, **settings)
        out, _ = tree_decode(model, ids, mask, max_new_tokens, tree, eos, do_sample=False, **settings)
        bad += not torch.equal(out, ref)
    return bad


# -- (1) greedy: identical to generate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", TREE_FAMILIES)
def test_greedy_tree_identity(family):
    for perturb in (0.0, 0.3):  # heads that mostly accept, heads that reject at varying depths
        model = make_model(family, depths=4, perturb=perturb)
        assert mismatches(model) == 0
    _, stats = tree_decode(model, *random_batch(1, 1), do_sample=False)
    assert stats["draft_tokens"] == 12  # the default tree's size at D = 4
    assert max(k for (k,) in stats["accepted_per_round"]) >= 1


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-gpt2"])
def test_greedy_tree_identity_other_architectures(preset):
    # GPT-2's learned positions: a node's position is n + its depth
    assert mismatches(make_model("blockwise", preset, perturb=0.3, seed=1), prompts=range(2)) == 0


def test_greedy_tree_identity_eager_eos_lookup_and_processors():
    model = make_model("blockwise", perturb=0.3, attn_implementation="eager")
    assert model.base_model.config._attn_implementation == "eager"
    assert mismatches(model, prompts=range(2)) == 0
    model = make_model("medusa", perturb=0.3)
    ids, mask = random_batch(0, 1)
    eos = int(reference(model, ids, mask, 12)[0, -5])  # a token the decode emits: it stops inside a block
    assert mismatches(model, prompts=[0], max_new_tokens=12, eos=[eos]) == 0
    hybrid = TreeDraft(size=4, lookup_ngram=3)
    assert mismatches(model, tree=hybrid) == 0
    # a processor that reads the prefix: each node's scores after its own path
    assert mismatches(model, prompts=range(2), repetition_penalty=1.5, no_repeat_ngram_size=2) == 0


def prefix_blind_scores(sampler, state, logits, tree):
    """Broken: every node's scores processed as if it followed the committed tokens only (not its path)."""
    none = state.tokens.new_zeros(1, 0)
    return torch.cat([sampler.scores(state, logits[:, i : i + 1], none) for i in range(logits.size(1))], dim=1)


def test_prefix_blind_processing_fails_the_identity(monkeypatch):
    model = make_model("blockwise", depths=4)
    settings = dict(repetition_penalty=3.0, no_repeat_ngram_size=2)
    assert mismatches(model, **settings) == 0
    monkeypatch.setattr(tree_drafts, "node_scores", prefix_blind_scores)
    assert mismatches(model, **settings) > 0


def test_lookup_paths_deeper_than_the_heads():
    model = make_model("blockwise", depths=2, perturb=0.3)
    prompt = torch.tensor([[5, 9, 14, 3, 7, 22, 5, 9, 14, 3, 7, 22, 5, 9]])  # the base continues the repetition
    ref = reference(model, prompt, torch.ones_like(prompt), 24)
    out, stats = tree_decode(model, prompt, max_new_tokens=24, tree=TreeDraft(size=3, lookup_ngram=2, lookup_tokens=8))
    assert torch.equal(out, ref)
    assert max(k for (k,) in stats["accepted_per_round"]) > 2  # lookup nodes past the heads' depth D = 2 kept


def keeps_first_slots(cache, new_start, keep):
    """Broken: keeps the tree's first len(keep) slots (the root and nodes 1..) instead of the accepted path."""
    tree_drafts.crop_cache(cache, new_start + len(keep))


def siblings_visible(self):
    """Broken: every node sees every earlier node (a causal mask over the tree), siblings included."""
    return torch.ones(len(self.tokens), len(self.tokens), dtype=torch.bool).tril()


@pytest.mark.parametrize(
    "broken", [(tree_drafts, "keep_path", keeps_first_slots), (Tree, "ancestors", siblings_visible)]
)
def test_broken_tree_verify_fails_the_identity(broken, monkeypatch):
    # a base whose attention is sharp enough that one wrong key changes its argmax (the default init's barely does)
    model = make_model("blockwise", depths=4, initializer_range=0.1)
    siblings_first = TreeDraft(choices=((1,), (0,), (2,), (0, 1), (0, 0), (0, 0, 0)))  # the best path is not slot 1, 2
    assert mismatches(model, prompts=range(6), tree=siblings_first) == 0
    monkeypatch.setattr(*broken)
    assert mismatches(model, prompts=range(6), tree=siblings_first) >= 2


def test_parallel_heads_read_the_path_layer_kwargs(monkeypatch):
    """The drafter of parallel heads runs the last layer over the kept slots with the verify's per-slot inputs and
    mask: the tree round cuts them to the accepted path; uncut (the whole tree's), the next drafts break."""
    model = make_model("parallel")
    assert mismatches(model, prompts=range(2)) == 0
    monkeypatch.setattr(tree_drafts, "path_layer_kwargs", lambda layer_kwargs, keep: layer_kwargs)
    with pytest.raises(RuntimeError, match="must match the size"):
        mismatches(model, prompts=range(2))


# -- (2) sampling: the law of what a tree round commits ----------------------------------------------------------------
def no_residual_update(p, candidates, q=None, sampled=0):
    """Broken (naive): accepts candidate i with probability p(c_i) under the original p, then draws from p."""
    return p[candidates], p.clone()


def emitted_law(p: torch.Tensor, candidates: list[int], q=None, sampled: int = 0) -> torch.Tensor:
    """Exact law [V] of the token a node emits under `candidate_acceptance` (accepted candidate or residual draw)."""
    accept, residual = tree_drafts.candidate_acceptance(p, candidates, q, sampled)
    law = torch.zeros_like(p)
    reach = 1.0  # P(candidates before i all rejected)
    for token, a in zip(candidates, accept):
        law[token] += reach * a
        reach = reach * (1 - a)
    return law + reach * residual


def tree_law_error(V: int = 5, seed: int = 0) -> float:
    """max |P(first 2 tokens) - p(y0) p(y1 | y0)| for a two-level tree: root children {c1, c2, c3}, depth-2
    children under two of them, and plain sampling after a node without children or a residual draw."""
    g = torch.Generator().manual_seed(seed)
    p0, p1 = random_conditionals(g, 0, V), random_conditionals(g, 1, V)
    children = {2: [1, 4, 0], 1: [3], 4: [0, 2]}  # root's candidates, then each depth-1 node's
    law = torch.zeros(V, V, dtype=torch.float64)
    first = emitted_law(p0, children.pop(2))
    for y0 in range(V):
        second = emitted_law(p1[y0], children[y0]) if y0 in children else p1[y0]
        law[y0] = first[y0] * second
    return float((law - p0[:, None] * p1).abs().max())


def test_point_mass_rule_is_exact():
    g = torch.Generator().manual_seed(0)
    for V, m in [(4, 1), (4, 3), (6, 6), (8, 2)]:
        p = random_conditionals(g, 0, V)
        for candidates in itertools.permutations(range(V), m):
            assert float((emitted_law(p, list(candidates)) - p).abs().max()) < 1e-12
    p = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # a candidate with no mass, then a sure one
    assert torch.allclose(emitted_law(p, [0, 1]), p)
    for seed in range(3):
        assert tree_law_error(seed=seed) < 1e-12


def sampled_law(p: torch.Tensor, q: torch.Tensor, m: int, extra: int | None = None) -> torch.Tensor:
    """Exact law [V] of the emitted token when m children are drawn from q without replacement (every ordered draw
    enumerated with its probability), then `extra` (a deterministic candidate, as a lookup token) unless drawn."""
    law = torch.zeros_like(p)
    for draw in itertools.permutations(range(p.numel()), m):
        prob, taken = 1.0, 0.0
        for c in draw:
            prob, taken = prob * q[c] / (1 - taken), taken + q[c]
        if prob > 0:
            candidates = list(draw) + ([extra] if extra is not None and extra not in draw else [])
            law += prob * emitted_law(p, candidates, q, m)
    return law


def test_sampled_children_rule_is_exact():
    g = torch.Generator().manual_seed(1)
    for V, m, extra in [(4, 1, None), (5, 2, None), (5, 3, None), (5, 2, 0), (4, 3, 3)]:
        p, q = random_conditionals(g, 0, V), random_conditionals(g, 0, V)
        assert float((sampled_law(p, q, m, extra) - p).abs().max()) < 1e-12
    q = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)  # q without the mass p has: all from the residual
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert float((sampled_law(p, q, 2) - p).abs().max()) < 1e-12


def residual_never_updated(p, candidates, q=None, sampled=0):
    """Broken: each sampled candidate accepted with min(1, p(c) / q_i(c)) against p itself, the residual never
    updated (after all rejections the token is drawn from p)."""
    accept = []
    for i, token in enumerate(candidates):
        q_i = q.clone()
        q_i[candidates[:i]] = 0
        accept.append((p[token] / (q_i[token] / q_i.sum())).clamp(max=1))
    return torch.stack(accept), p.clone()


def test_sampled_children_broken_rule_is_not_exact(monkeypatch):
    g = torch.Generator().manual_seed(1)
    p, q = random_conditionals(g, 0, 5), random_conditionals(g, 0, 5)
    monkeypatch.setattr(tree_drafts, "candidate_acceptance", residual_never_updated)
    assert float((sampled_law(p, q, 3) - p).abs().max()) > 1e-3


@pytest.mark.parametrize("family", TREE_FAMILIES)
def test_sampled_children_tree_runs_and_greedy_ignores_it(family):
    model = sampling_model(family)
    tree = TreeDraft(size=8, sample_children=(3, 1, 1))
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[3, 7, 1, 9]])
    out, stats = tree_decode(model, ids, max_new_tokens=12, tree=tree, do_sample=True, generator=g)
    assert out.shape == (1, 16) and max(stats["draft_tokens_per_round"]) == 8  # 3 + 3 + 2: the size caps depth 3
    ref = reference(model, ids, torch.ones_like(ids), 12)
    assert torch.equal(tree_decode(model, ids, max_new_tokens=12, tree=tree, do_sample=False)[0], ref)


def test_naive_rule_is_not_exact(monkeypatch):
    monkeypatch.setattr(tree_drafts, "candidate_acceptance", no_residual_update)
    assert tree_law_error() > 1e-3


def test_candidate_acceptance_hand_worked():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    accept, residual = candidate_acceptance(p, [1, 0])
    # c1 = 1: kept with p(1) = 0.3; else r = (0.5, 0, 0.2) / 0.7, c2 = 0 kept with 5/7; else r = (0, 0, 1)
    assert torch.allclose(accept, torch.tensor([0.3, 5 / 7], dtype=torch.float64))
    assert torch.allclose(residual, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_residual_without_mass_falls_back():
    # float32 rounding: p(0) / q(0) = 0.99999994 < 1, yet max(p - q, 0) = 0 everywhere; a rejection then draws from
    # p without the candidate, renormalised: (0, 1) (a zero residual makes the draw raise)
    p, q = torch.tensor([0.49999997, 0.5]), torch.tensor([0.5, 0.5])
    accept, residual = candidate_acceptance(p, [0], q, sampled=1)
    assert accept.item() == pytest.approx(0.99999994, abs=1e-8) and accept.item() < 1
    assert torch.equal(residual, torch.tensor([0.0, 1.0]))
    sampler = tree_drafts.Sampler(do_sample=True, generator=torch.Generator().manual_seed(0))
    assert int(sampler.sample(residual[None])[0]) == 1  # what walk_sampled draws after a rejection
    with pytest.raises(RuntimeError):  # the unguarded residual, (p - q).clamp(min=0) = 0, cannot be drawn from
        sampler.sample((p - q).clamp(min=0)[None])


TOP_K_TREE = TreeDraft(sample_children=None)  # deterministic children also when sampling


def tree_samples(model, prompt, n, seed=0, tree=TOP_K_TREE) -> torch.Tensor:
    """n samples of 3 tokens after `prompt`, one call each (by default a top-k tree: deterministic children)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt])
    rows = [
        tree_decode(model, ids, max_new_tokens=3, tree=tree, do_sample=True, generator=g)[0][0, len(prompt) :]
        for _ in range(n)
    ]
    return torch.stack(rows)


@pytest.mark.slow  # batch 1: one call per sample (about 90 s here); the exact tests above show the rule in milliseconds
def test_tree_sampling_matches_exact_marginals(monkeypatch):
    model, prompt = sampling_model("blockwise"), [3, 7, 1, 9, 4, 2]
    exact = exact_marginals(model.base_model, prompt, 3)
    assert min(marginal_pvalues(tree_samples(model, prompt, 1200), exact)) > 1e-4
    monkeypatch.setattr(tree_drafts, "candidate_acceptance", no_residual_update)
    assert min(marginal_pvalues(tree_samples(model, prompt, 1200), exact)) < 1e-6


@pytest.mark.slow  # as above, with children drawn from the heads' q
def test_sampled_tree_matches_exact_marginals():
    model, prompt = sampling_model("blockwise"), [3, 7, 1, 9, 4, 2]
    exact = exact_marginals(model.base_model, prompt, 3)
    samples = tree_samples(model, prompt, 1200, tree=TreeDraft(size=9, sample_children=(3, 1, 1), lookup_ngram=2))
    assert min(marginal_pvalues(samples, exact)) > 1e-4


# -- (3) the tree and its mask, by hand ---------------------------------------------------------------------------------
def test_tree_mask_hand_worked():
    tree = Tree()
    for path in ([5, 6], [7], [5, 8]):
        tree.add_path(path, limit=4)
    assert (tree.tokens[1:], tree.parents[1:], tree.depths[1:]) == ([5, 6, 7, 8], [0, 1, 0, 1], [1, 2, 1, 2])
    past = torch.tensor([[1, 0, 1]])  # a hole at slot 1
    expected = torch.tensor(
        [  # past slots | root, 5, 5-6, 7, 5-8
            [1, 0, 1, 1, 0, 0, 0, 0],
            [1, 0, 1, 1, 1, 0, 0, 0],
            [1, 0, 1, 1, 1, 1, 0, 0],
            [1, 0, 1, 1, 0, 0, 1, 0],
            [1, 0, 1, 1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    sdpa = tree_attention(tree, past, "sdpa", torch.float32)
    assert sdpa.shape == (1, 1, 5, 8) and torch.equal(sdpa[0, 0], expected)
    eager = tree_attention(tree, past, "eager", torch.float32)
    assert torch.equal(eager[0, 0] == 0, expected) and float(eager.min()) == torch.finfo(torch.float32).min
    tree.add_path([9], limit=4)  # full: nothing added
    assert tree.size == 4 and tree.path_to(4) == [1, 4]


def test_head_and_lookup_paths():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 4.0, 0.0]])  # depth 1 ranks 1, 2, 3; depth 2 ranks 0, 2
    choices = ((0,), (0, 0), (1,), (0, 1), (0, 0, 0))  # the depth-3 choice does not fit 2 depths
    assert tree_drafts.head_paths(logits, choices) == [[1], [1, 0], [2], [1, 2]]
    text = [4, 1, 2, 3, 9, 1, 2]
    assert lookup_path(text, 3, 2) == [3, 9]  # "1 2" matched at its first occurrence
    assert lookup_path([4, 5, 6], 2, 3) == []


# -- (4) bad input ------------------------------------------------------------------------------------------------------
def one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_input_one_line_errors():
    model = make_model("blockwise")
    ids, mask = random_batch(0, 2)
    one_line_error(lambda: tree_decode(model, ids, mask), "batch of 2")
    one_line_error(lambda: TreeDraft(size=0), "size must be an integer >= 1, got 0")
    one_line_error(lambda: TreeDraft(choices=((0, 0),)), r"listed after their parents, got \(0, 0\)")
    one_line_error(lambda: TreeDraft(lookup_ngram=-1), "lookup_ngram must be an integer >= 0, got -1")
    one_line_error(lambda: TreeDraft(lookup_tokens=0), "lookup_tokens must be an integer >= 1 or None, got 0")
    one_line_error(lambda: TreeDraft(sample_children=(2, 0)), r"sample_children must be .*, got \(2, 0\)")
    one_line_error(lambda: TreeDraft(sample_children=3), "sample_children must be .*, got 3")
    one_line_error(lambda: TreeDraft(sample_children=(True,)), r"sample_children must be .*, got \(True,\)")
    one_line_error(lambda: TreeDraft(choices=((0.5,),)), r"rank paths of integers >= 0 .*, got \(0.5,\)")
    one_line_error(lambda: TreeDraft(choices=(0, 1)), r"sequence of rank paths .*, got \(0, 1\)")
    assert TreeDraft(choices=[[0], [0, 0]]).choices == ((0,), (0, 0))  # lists are taken as tuples
    one_line_error(lambda: tree_decode(model, ids[:1], tree=True), "tree must be a .*TreeDraft or None, got True")
    one_line_error(lambda: tree_decode(model, ids[:1], tree={"size": 4}), r"TreeDraft or None, got \{'size': 4\}")
    one_line_error(lambda: tree_decode(make_model("sequential"), ids[:1]), "'sequential' family chains its depths")
    one_line_error(lambda: tree_decode(model, ids[:1], adaptive_draft_tokens=True), "adaptive_draft_tokens")
    model.base_model.config._attn_implementation = "flex_attention"
    one_line_error(lambda: tree_decode(model, ids[:1]), "sdpa or eager attention")
