"""`speculative_generate` decodes under the generation config `generate` would use: the model's own generation
config, updated by the call's settings, transformers' defaults for the rest (top_k = 50 among them). Its logits
processors act at every verify position and draft depth with that position's own prefix; one that cannot is refused
by name. Greedy outputs are compared with `generate`'s token for token (float64, see tests/test_decoding.py)."""

from __future__ import annotations

import pytest
import torch
from decoding_models import FAMILIES, PAD, check_identity, make_model, random_batch, reference

import trl_mtp.decoding as decoding
from trl_mtp.decoding import speculative_generate


def test_repetition_penalty_in_the_generation_config_changes_greedy_output_as_in_generate():
    for family in FAMILIES:
        model = make_model(family, perturb=0.3)
        ids, mask = random_batch(2, 3)
        plain = reference(model, ids, mask, 20)
        model.base_model.generation_config.repetition_penalty = 1.3
        assert not torch.equal(reference(model, ids, mask, 20), plain)  # the penalty matters on these prompts
        check_identity(model, ids, mask, 20)


SETTINGS = {  # each changes greedy output on the prompts below (asserted); the untrained base repeats the rows'
    # last tokens 58, 30 and 68, which the settings ban in several ways
    "repetition_penalty": dict(repetition_penalty=3.0),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[58], [30, 30], [68, 68, 68]]),
    "suppress_tokens": dict(suppress_tokens=[58, 30], begin_suppress_tokens=[68]),
    "sequence_bias": dict(sequence_bias=[[[58, 58], -50.0], [[30], -3.0], [[68, 68, 68], -50.0]]),
    "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=(3, 1.5), eos_token_id=7),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_under_each_processor_is_generate(family, setting):
    model = make_model(family, perturb=0.3)
    ids, mask = random_batch(4, 3)
    settings = dict(SETTINGS[setting])
    eos = settings.pop("eos_token_id", None)
    assert not torch.equal(reference(model, ids, mask, 16, eos, **settings), reference(model, ids, mask, 16, eos))
    check_identity(model, ids, mask, 16, eos, **settings)


@pytest.mark.parametrize("family", FAMILIES)
def test_min_new_tokens_holds_eos_back_as_in_generate(family):
    model = make_model(family)
    ids, mask = random_batch(6, 3)
    eos = int(reference(model, ids, mask, 3)[0, -2])  # row 0's second new token
    free = reference(model, ids, mask, 12, eos)
    held = reference(model, ids, mask, 12, eos, min_new_tokens=8)
    assert not torch.equal(free, held)
    check_identity(model, ids, mask, 12, eos, min_new_tokens=8)


def test_processors_need_each_positions_own_prefix(monkeypatch):
    """Applying the processors with the committed tokens alone (drafts left out of the prefix) breaks the identity:
    the per-position prefix is what makes an n-gram ban see the drafts before it."""
    model = make_model("blockwise")  # accept-heavy: most drafts kept, so the prefixes differ from position to position
    ids, mask = random_batch(2, 3)
    stats = check_identity(model, ids, mask, 20, no_repeat_ngram_size=2)
    assert stats["mean_accepted_length"] > 1.5
    prefix_ids = decoding.prefix_ids

    def without_drafts(state, drafts):
        return prefix_ids(state, drafts[:, :0])

    monkeypatch.setattr(decoding, "prefix_ids", without_drafts)
    with pytest.raises(AssertionError):
        check_identity(model, ids, mask, 20, no_repeat_ngram_size=2)


def test_default_top_k_50_applies_when_sampling():
    """A fresh model's near-uniform distribution over 96 tokens: `generate` samples from the top 50 only
    (transformers' default top_k), and so must we, at every position; top_k=0 lifts the cut (the check can fail)."""
    model = make_model("blockwise", perturb=0.3)
    prompt = torch.tensor([[5, 9, 2, 31, 7]]).expand(300, -1)

    def ranks(**settings):  # rank, under the base's logits, of every sampled token (0 = most likely)
        out, _ = speculative_generate(
            model,
            prompt,
            max_new_tokens=4,
            do_sample=True,
            eos_token_id=[],
            pad_token_id=PAD,
            generator=torch.Generator().manual_seed(0),
            **settings,
        )
        with torch.no_grad():
            logits = model.base_model(out).logits[:, prompt.size(1) - 1 : -1]
        new = out[:, prompt.size(1) :]
        return (logits > logits.gather(2, new[..., None])).sum(-1)

    assert int(ranks().max()) < 50
    assert float((ranks(top_k=0) >= 50).float().mean()) > 0.2


@pytest.mark.parametrize(
    "settings, named",
    [
        (dict(guidance_scale=1.5), "UnbatchedClassifierFreeGuidanceLogitsProcessor"),
        (dict(num_beams=2), "beam_search"),
        (dict(num_return_sequences=2, do_sample=True), "num_return_sequences=2"),
        (dict(tempreature=0.5), "tempreature"),
    ],
)
def test_unsupported_settings_are_refused_by_name(settings, named):
    model = make_model("blockwise")
    with pytest.raises(ValueError, match=named):
        speculative_generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=3, pad_token_id=PAD, **settings)


def test_generation_config_argument_as_in_generate():
    from transformers import GenerationConfig

    model = make_model("parallel", perturb=0.3)
    ids, mask = random_batch(3, 2)
    config = GenerationConfig(do_sample=False, repetition_penalty=1.4, max_new_tokens=99)
    ref = model.base_model.generate(
        ids, attention_mask=mask, generation_config=config, max_new_tokens=14, pad_token_id=PAD
    )
    out, _ = speculative_generate(model, ids, mask, max_new_tokens=14, pad_token_id=PAD, generation_config=config)
    assert torch.equal(out, ref)
