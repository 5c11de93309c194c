"""The draft-length option the Stern / Gloeckle / DeepSeek measurements use (`speculative_generate(...,
num_draft_tokens=k)`): lossless for every k (output identical to greedy `generate`), fewer forwards with more
heads on an accept-heavy model, and a ValueError naming a bad k. Float64: see tests/test_decoding.py."""

from __future__ import annotations

import pytest
import torch
from decoding_models import PAD, make_model

from trl_mtp.config import HEAD_TYPES
from trl_mtp.decoding import speculative_generate


@pytest.mark.parametrize("family", HEAD_TYPES)
def test_every_draft_length_is_lossless(family):
    model = make_model(family)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 96, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    ids = ids.masked_fill(mask == 0, PAD)
    ref = model.base_model.generate(
        ids, attention_mask=mask, max_new_tokens=15, do_sample=False, eos_token_id=None, pad_token_id=PAD
    )
    forwards = []
    for k in range(model.heads.num_depths + 1):
        out, stats = speculative_generate(
            model, ids, mask, max_new_tokens=15, eos_token_id=None, pad_token_id=PAD, num_draft_tokens=k
        )
        assert torch.equal(out, ref), f"num_draft_tokens={k}"
        assert len(stats["acceptance_by_position"]) == k
        forwards.append(stats["forwards"])
    assert forwards[0] == 15  # k = 0 is plain decoding: one forward per token
    assert forwards[-1] < forwards[0]


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True])
def test_bad_draft_length_names_the_value(bad):
    model = make_model("blockwise")
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=3, num_draft_tokens=bad)
