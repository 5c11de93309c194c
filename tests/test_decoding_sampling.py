"""Speculative sampling (`trl_mtp.decoding.accept_sampled`) is distributed exactly as `generate`'s sampling.

Two levels. (1) One round, exactly: with the rule's own pieces (`draft_acceptance`, `next_distribution`) on random
target and draft tables over a tiny vocabulary, the law of a round's block (kept drafts, then one token), followed
by plain sampling, is the target's law of the next D + 1 tokens, to float precision. (2) End to end, every head
family: the empirical marginals of the first D + 2 tokens (the prefill's token, the D draft positions, the bonus)
of speculative samples from left-padded batches against the exact marginals, enumerated from the base's
probabilities, and the same under a checkpoint's generation config (Qwen2.5-Instruct's), the reference itself
checked against `generate`'s samples. Rules that always keep the last draft, draw the bonus from the wrong
distribution or resample from p instead of the residual fail both levels."""

from __future__ import annotations

import itertools

import pytest
import torch
from decoding_models import FAMILIES, PAD, RandomPlanner, make_model

import trl_mtp.decoding as decoding
from trl_mtp.decoding import speculative_generate

# -- broken rules: each must fail the checks ------------------------------------------------------------------------
draft_acceptance, next_distribution = decoding.draft_acceptance, decoding.next_distribution


def keeps_last_draft(p, q, drafts):
    """Accepts the last draft whenever the ones before it were kept."""
    return torch.cat([draft_acceptance(p, q, drafts)[:, :-1], torch.ones_like(p[:, -1:, 0])], dim=1)


def bonus_from_previous_position(p, q, k):
    """After D acceptances draws the bonus from p_{D-1} instead of p_D."""
    rows = torch.arange(p.size(0))
    return torch.where((k == q.size(1))[:, None], p[rows, (k - 1).clamp(min=0)], next_distribution(p, q, k))


def resamples_from_p(p, q, k):
    """Draws the token after a rejection from p instead of norm(max(0, p - q))."""
    return p[torch.arange(p.size(0)), k]


BROKEN = {
    "keeps last draft": ("draft_acceptance", keeps_last_draft),
    "bonus from p_{D-1}": ("next_distribution", bonus_from_previous_position),
    "resamples from p": ("next_distribution", resamples_from_p),
}


# -- (1) one round, exactly -----------------------------------------------------------------------------------------
def round_law_error(V: int = 4, D: int = 3, seed: int = 0) -> float:
    """max |P(first D + 1 tokens = s) - p(s)| over s in V^(D+1), where a round proposes d_j ~ q_j(. | d_<j), keeps
    and resamples with the rule, and plain sampling from p continues after its block. Tables are random
    conditionals: p_j(. | y_0..y_{j-1}) for j = 0..D, q_j(. | d_1..d_{j-1}) for j = 1..D."""
    g = torch.Generator().manual_seed(seed)
    p = [random_conditionals(g, j, V) for j in range(D + 1)]
    q = [None] + [random_conditionals(g, j - 1, V) for j in range(1, D + 1)]
    drafts = torch.tensor(list(itertools.product(range(V), repeat=D)))  # [V^D, D]: every draft sequence
    rows = torch.arange(len(drafts))
    p_rows = torch.stack([given(p[j], drafts[:, :j]) for j in range(D + 1)], 1)  # [V^D, D+1, V]
    q_rows = torch.stack([given(q[j], drafts[:, : j - 1]) for j in range(1, D + 1)], 1)  # [V^D, D, V]
    weight = q_rows[rows[:, None], torch.arange(D), drafts].prod(1)  # P(drafts) = prod_j q_j(d_j | d_<j)
    accept = decoding.draft_acceptance(p_rows[:, :D], q_rows, drafts)  # [V^D, D]
    kept_before = torch.cat([torch.ones_like(accept[:, :1]), accept.cumprod(1)], 1)  # P(d_1..d_k kept)
    law = torch.zeros((V,) * (D + 1), dtype=torch.float64)  # P(first D+1 tokens), continuing with p after a block
    for k in range(D + 1):
        p_k = kept_before[:, k] * (1 - accept[:, k] if k < D else 1)  # P(exactly k kept | drafts)
        token = decoding.next_distribution(p_rows, q_rows, torch.full((len(drafts),), k))  # [V^D, V]
        context = (drafts[:, :k] * V ** torch.arange(k - 1, -1, -1)).sum(1)  # y_0..y_{k-1} = d_1..d_k, as a number
        block = torch.zeros(V**k, V, dtype=torch.float64).index_add_(0, context, (weight * p_k)[:, None] * token)
        block = block.view((V,) * (k + 1))  # P(block = y_0..y_k)
        for j in range(k + 1, D + 1):  # plain sampling continues: y_j ~ p_j(. | y_<j)
            block = block[..., None] * p[j]
        law += block
    exact = p[0]
    for j in range(1, D + 1):
        exact = exact[..., None] * p[j]
    return float((law - exact).abs().max())


def random_conditionals(g: torch.Generator, depth: int, V: int) -> torch.Tensor:
    """[V] * depth + [V]: a random distribution for every context of `depth` tokens, sharper than uniform so that
    target and draft tables differ a lot."""
    x = torch.rand(*(V,) * depth, V, generator=g, dtype=torch.float64) ** 3
    return x / x.sum(-1, keepdim=True)


def given(table: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """[N, V] rows of a conditional table for contexts [N, depth]."""
    return table[tuple(context.T)] if context.size(1) else table.expand(len(context), -1)


def test_one_round_is_exact():
    for seed in range(3):
        assert round_law_error(seed=seed) < 1e-12
    assert round_law_error(V=3, D=1) < 1e-12 and round_law_error(V=5, D=2) < 1e-12


@pytest.mark.parametrize("broken", list(BROKEN))
def test_one_round_with_a_broken_rule_is_not_exact(broken, monkeypatch):
    monkeypatch.setattr(decoding, *BROKEN[broken])
    assert round_law_error() > 1e-3


# -- (2) end to end ---------------------------------------------------------------------------------------------------
V, D = 10, 3
PROMPTS = ([3, 7, 1, 9, 4, 2], [5, 8, 6])  # the second is left-padded in the batch


def sampling_model(family: str, vocab: int = V, depths: int = D, sharpen: float = 4.0):
    model = make_model(
        family,
        vocab=vocab,
        depths=depths,
        perturb=0.1,
        perturb_from=0,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    with torch.no_grad():  # sharper next-token distributions than a fresh model's near-uniform ones
        model.trunk.final_norm.weight.mul_(sharpen)
    return model


def exact_marginals(base, prompt: list[int], n: int, processors=None) -> list[torch.Tensor]:
    """Exact law of the first n sampled tokens after `prompt`, by enumerating every prefix: the marginal [V] of
    each token, then the joint [V * V] of each pair of neighbours (a bonus drawn from the wrong position keeps the
    marginals but not the pairs); `processors` (a `LogitsProcessorList`) process each prefix's logits as `generate`
    does."""
    seqs = torch.tensor([prompt])
    joint = torch.ones(1, dtype=torch.float64)  # P(prefix) for each enumerated prefix
    marginals, pairs = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = torch.cat([base(chunk).logits[:, -1] for chunk in seqs.split(4096)]).float()
            scores = logits if processors is None else processors(seqs, logits)
            vocab = scores.size(-1)
            joint = (joint[:, None] * scores.double().softmax(-1)).flatten()
            marginals.append(joint.view(-1, vocab).sum(0))
            pairs.append(joint.view(-1, vocab * vocab).sum(0) if len(marginals) > 1 else None)
            seqs = torch.cat([seqs.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(len(seqs))[:, None]], 1)
    return marginals + pairs[1:]


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit; cells with expected count < 5 pooled into one."""
    expected = probs.double() * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    assert df >= 2, "too few populated cells for a meaningful test"
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2))


def marginal_pvalues(samples: torch.Tensor, exact: list[torch.Tensor]) -> list[float]:
    """p-values of the empirical marginals and neighbour pairs of samples [N, n] against `exact_marginals`."""
    n, vocab = samples.size(1), exact[0].numel()
    cells = [samples[:, j] for j in range(n)] + [samples[:, j - 1] * vocab + samples[:, j] for j in range(1, n)]
    return [chi_square_pvalue(torch.bincount(c, minlength=law.numel()), law) for c, law in zip(cells, exact)]


def left_padded(prompts, n_each: int):
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts for _ in range(n_each)])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts for _ in range(n_each)])
    return ids, mask


def speculative_samples(model, n_each: int, seed: int = 0, **settings):
    """(new tokens [len(PROMPTS) * n_each, D + 2] grouped by prompt, first verify round's kept drafts per row)."""
    ids, mask = left_padded(PROMPTS, n_each)
    out, stats = speculative_generate(
        model,
        ids,
        mask,
        max_new_tokens=model.heads.num_depths + 2,
        do_sample=True,
        eos_token_id=[],
        pad_token_id=PAD,
        generator=torch.Generator().manual_seed(seed),
        **settings,
    )
    return out[:, ids.size(1) :].view(len(PROMPTS), n_each, -1), torch.tensor(stats["accepted_per_round"][0])


@pytest.fixture(scope="module")
def exact_family_marginals():
    base = sampling_model("blockwise").base_model  # the same base (seed, sharpening) under every family's heads
    return [exact_marginals(base, prompt, D + 2) for prompt in PROMPTS]


def min_pvalue(model, exact, n_each=3000, seed=0) -> tuple[float, torch.Tensor]:
    samples, kept = speculative_samples(model, n_each, seed)
    return min(p for group, ex in zip(samples, exact) for p in marginal_pvalues(group, ex)), kept


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_matches_exact_marginals_at_every_position(family, exact_family_marginals):
    pvalue, kept = min_pvalue(sampling_model(family), exact_family_marginals)
    # the first verify round kept 0, 1, .., D drafts in many rows: every draft position both kept and rejected,
    # and the bonus drawn
    assert min(int((kept == k).sum()) for k in range(D + 1)) >= 100, torch.bincount(kept, minlength=D + 1)
    assert pvalue > 1e-4


@pytest.mark.slow  # 3 x 16000 samples; the exact one-round test above shows the same failures in milliseconds
@pytest.mark.parametrize("broken", list(BROKEN))
def test_broken_rules_fail_the_marginals(broken, exact_family_marginals, monkeypatch):
    monkeypatch.setattr(decoding, *BROKEN[broken])
    pvalue, _ = min_pvalue(sampling_model("blockwise"), exact_family_marginals, n_each=8000)
    assert pvalue < 1e-6


# -- a checkpoint's generation config: Qwen2.5-Instruct's -----------------------------------------------------------
QWEN25_INSTRUCT = dict(do_sample=True, repetition_penalty=1.05, temperature=0.7, top_k=20, top_p=0.8)


def generate_processors(base, prompt: list[int]):
    """The logits processors `generate` builds from the base's generation config, from transformers itself."""
    ids = torch.tensor([prompt])
    config, _ = base._prepare_generation_config(None)
    base._prepare_special_tokens(config, False, device="cpu")
    return base._get_logits_processor(config, input_ids_seq_length=ids.size(1), encoder_input_ids=ids, device="cpu")


@pytest.mark.parametrize("family", ["blockwise", "sequential"])
def test_checkpoint_generation_config_sampling_matches_generate(family):
    vocab, depths = 32, 2  # more tokens than top_k, so top-k cuts
    model = sampling_model(family, vocab=vocab, depths=depths, sharpen=3.0)
    base = model.base_model
    base.generation_config.update(**QWEN25_INSTRUCT)
    prompt = [3, 7, 1, 3, 9, 4]  # a repeated token: the repetition penalty has prompt tokens to act on
    exact = exact_marginals(base, prompt, depths + 2, generate_processors(base, prompt))
    ids = torch.tensor([prompt] * 4000)
    torch.manual_seed(0)  # generate samples from the global generator
    plain = base.generate(ids, max_new_tokens=depths + 2, eos_token_id=[], pad_token_id=PAD)[:, len(prompt) :]
    assert min(marginal_pvalues(plain, exact)) > 1e-4, "the enumerated reference is generate's distribution"
    out, stats = speculative_generate(
        model,
        ids,
        max_new_tokens=depths + 2,
        eos_token_id=[],
        pad_token_id=PAD,
        generator=torch.Generator().manual_seed(1),
    )  # no settings: the config's
    assert 0.05 < stats["acceptance_by_position"][0] < 0.95
    assert min(marginal_pvalues(out[:, len(prompt) :], exact)) > 1e-4
    # the same check has the power to see a sampler that ignores the config (the full softmax, temperature 1)
    full = exact_marginals(base, prompt, depths + 2)
    assert min(marginal_pvalues(out[:, len(prompt) :], full)) < 1e-6


@pytest.mark.parametrize("family", ["blockwise", "sequential"])
def test_sampling_with_any_number_of_drafts_per_round_matches_exact_marginals(family, exact_family_marginals):
    """Rounds drafting a random 0..D tokens (a new sequence of choices for each chunk of rows) keep the exact law."""
    model = sampling_model(family)
    samples = [
        speculative_samples(model, 500, seed, adaptive_draft_tokens=RandomPlanner(D, seed=seed))[0] for seed in range(6)
    ]
    samples = torch.cat(samples, dim=1)
    assert min(p for group, ex in zip(samples, exact_family_marginals) for p in marginal_pvalues(group, ex)) > 1e-4
