"""Greedy identity as a property (hypothesis): for any head family, number of heads D, number of drafts 0..D, batch
size, left padding, EOS token and logits processor, `speculative_generate` returns `generate`'s output token for
token (float64 tiny models, heads perturbed so rows keep different numbers of drafts)."""

from __future__ import annotations

import functools

import torch
from decoding_models import FAMILIES, PAD, make_model, random_batch, reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trl_mtp.decoding as decoding
from trl_mtp.decoding import speculative_generate

PROCESSORS = ({}, {"repetition_penalty": 2.0}, {"no_repeat_ngram_size": 2})
accept_greedy = decoding.accept_greedy


@functools.cache
def model_for(family: str, depths: int):
    return make_model(family, depths=depths, perturb=0.3, seed=1)


def mismatch(family, depths, drafts, batch, seed, max_len, max_new_tokens, eos_index, processors) -> str | None:
    """None when speculative == generate for this example, else a description of the difference."""
    model = model_for(family, depths)
    ids, mask = random_batch(seed, batch, max_len=max_len, min_len=1)
    eos = []
    if eos_index is not None:  # an EOS token the greedy continuation of row 0 meets
        eos = int(reference(model, ids, mask, eos_index + 1, **processors)[0, -1])
    ref = reference(model, ids, mask, max_new_tokens, eos, **processors)
    out, _ = speculative_generate(
        model,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=PAD,
        num_draft_tokens=drafts,
        **processors,
    )
    return None if torch.equal(out, ref) else f"speculative {out.tolist()}\ngenerate    {ref.tolist()}"


@st.composite
def examples(draw):
    depths = draw(st.integers(1, 4))
    return dict(
        family=draw(st.sampled_from(FAMILIES)),
        depths=depths,
        drafts=draw(st.integers(0, depths)),
        batch=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**16)),
        max_len=draw(st.integers(1, 10)),
        max_new_tokens=draw(st.integers(1, 14)),
        eos_index=draw(st.none() | st.integers(0, 8)),
        processors=draw(st.sampled_from(PROCESSORS)),
    )


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(examples())
def test_greedy_identity_property(example):
    assert mismatch(**example) is None


def keeps_one_more_draft(scores, drafts, sampler=None, draft_probs=None):
    """Keeps one draft more than agreed with the main head (when there is one)."""
    k, _ = accept_greedy(scores, drafts)
    k = (k + 1).clamp(max=drafts.size(1))
    return k, scores.argmax(-1).gather(1, k[:, None]).squeeze(1)


def test_a_broken_acceptance_rule_breaks_the_property(monkeypatch):
    example = dict(
        family="blockwise",
        depths=3,
        drafts=3,
        batch=3,
        seed=0,
        max_len=8,
        max_new_tokens=14,
        eos_index=None,
        processors={},
    )
    assert mismatch(**example) is None
    monkeypatch.setattr(decoding, "accept_greedy", keeps_one_more_draft)
    assert mismatch(**example) is not None
