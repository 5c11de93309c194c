"""MTP-guided lookahead search (`trl_mtp.lookahead`): exact budget accounting, greedy as the smallest search, a value
that prefers a known string steers the search to it, bad arguments raise ValueError naming the value.

Tiny random models in float64 (a tie in float32 could flip an argmax between a verify over D+1 tokens and
`generate`'s one-token steps); a fake tokenizer maps token ids to text so that a value function can read them."""

from __future__ import annotations

import decoding_models
import pytest
import torch

from trl_mtp.lookahead import best_of_n, lookahead_search
from trl_mtp.model import MTPForCausalLM

VOCAB, PAD, EOS = 64, 0, 1


class IdTokenizer:
    """Token ids as space-separated numbers: a value function can check a continuation exactly."""

    def batch_decode(self, sequences, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in seq) for seq in sequences]


def make_model(family: str = "sequential") -> MTPForCausalLM:
    """A float64 tiny model with D = 2 heads of `family` on this file's vocabulary."""
    return decoding_models.make_model(family, depths=2, vocab=VOCAB)


PROMPT = [5, 9, 13, 2, 7, 30]


@pytest.mark.parametrize("family", ["sequential", "blockwise", "parallel"])
def test_one_branch_one_beam_is_greedy(family):
    model = make_model(family)
    ref = model.base_model.generate(
        torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, pad_token_id=PAD, eos_token_id=None
    )[0, len(PROMPT) :].tolist()
    result = lookahead_search(
        model, PROMPT, beam_width=1, branches=1, max_forwards=100, max_new_tokens=12, pad_token_id=PAD
    )
    assert result.completion == ref
    # one row per round: the prefill + one verify per round, each committing 1 + accepted drafts
    assert result.stats["forwards"] == 1 + result.stats["expansions"] <= 12


@pytest.mark.parametrize("budget", [1, 2, 5, 9, 17])
def test_budget_is_never_exceeded_and_counted_exactly(budget):
    model = make_model()
    calls = []

    def value_fn(prompts, completions):
        calls.append(len(completions))
        return [0.0] * len(completions)  # never satisfied: the search spends its whole budget

    result = lookahead_search(
        model,
        PROMPT,
        value_fn,
        prompt_text="p",
        tokenizer=IdTokenizer(),
        beam_width=3,
        branches=2,
        max_forwards=budget,
        max_new_tokens=40,
        pad_token_id=PAD,
    )
    stats = result.stats
    assert stats["forwards"] == budget  # 1 prefill + the candidate rows of every expansion, cut to the budget
    assert stats["base_calls"] == 1 + stats["expansions"]
    # every candidate row is a verify of D+1 tokens (the prompt's prefill scores len(PROMPT))
    assert stats["scored_tokens"] == len(PROMPT) + (budget - 1) * (model.heads.num_depths + 1)


def test_value_preferring_a_known_string_finds_it():
    model = make_model()
    greedy = lookahead_search(
        model, PROMPT, beam_width=1, branches=1, max_forwards=50, max_new_tokens=6, pad_token_id=PAD
    )
    # the target: the base's 2nd choice of first token, then its greedy continuation. Branches start at block
    # boundaries (here the first token), and this one is not what greedy says.
    logits = model.base_model(torch.tensor([PROMPT])).logits[0, -1]
    second = int(logits.topk(2).indices[1])
    rest = model.base_model.generate(
        torch.tensor([PROMPT + [second]]), max_new_tokens=5, do_sample=False, pad_token_id=PAD, eos_token_id=None
    )[0, len(PROMPT) + 1 :]
    target = " ".join(map(str, [second] + rest.tolist()))
    assert target != " ".join(map(str, greedy.completion))

    def value_fn(prompts, completions):
        return [float(c == target) for c in completions]

    found = lookahead_search(
        model,
        PROMPT,
        value_fn,
        prompt_text="p",
        tokenizer=IdTokenizer(),
        beam_width=4,
        branches=2,
        max_forwards=60,
        max_new_tokens=6,
        pad_token_id=PAD,
        stop_value=1.0,
    )
    assert found.value == 1.0
    assert " ".join(map(str, found.completion)) == target
    assert found.stats["forwards"] <= 60


def test_best_of_n_fits_its_budget():
    model = make_model()

    def value_fn(prompts, completions):
        return [0.0] * len(completions)

    for speculative in (True, False):
        result = best_of_n(
            model,
            PROMPT,
            value_fn,
            prompt_text="p",
            tokenizer=IdTokenizer(),
            max_forwards=20,
            max_new_tokens=6,
            pad_token_id=PAD,
            speculative_cost=speculative,
        )
        assert 0 < result.stats["forwards"] <= 20
        if not speculative:  # plain sampling without EOS: 6 forwards per sample
            assert result.stats["samples"] == 3 and result.stats["forwards"] == 18


@pytest.mark.parametrize(
    "name, value",
    [("beam_width", 0), ("branches", 0), ("max_forwards", 0), ("max_new_tokens", -1), ("beam_width", 1.5)],
)
def test_bad_arguments_name_the_value(name, value):
    model = make_model()
    with pytest.raises(ValueError, match=name):
        lookahead_search(model, PROMPT, **{name: value})


def test_value_fn_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        lookahead_search(make_model(), PROMPT, lambda p, c: [0.0] * len(c))
