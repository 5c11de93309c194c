"""What a native MTP layer's own type changes in the trunk's layer kwargs: the sliding window (Mellum)."""

import pytest
import torch

from trl_mtp.heads.native_layouts import sliding_window_mask


def test_sliding_window_mask_by_hand():
    """Queries are the last Q of the K keys; query q sees keys q - window < k <= q (transformers' window)."""
    hidden = torch.zeros(1, 2, 4)  # Q = 2 queries, at key positions 3 and 4 of K = 5
    causal = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[None, None]
    window = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)[None, None]
    assert torch.equal(sliding_window_mask(causal, hidden, 3, "sdpa"), window)
    additive = torch.zeros(1, 1, 2, 5).masked_fill(~causal, -1e9)
    got = sliding_window_mask(additive, hidden, 3, "eager")
    assert torch.equal(got == 0, window) and (got[~window] < -1e9 / 2).all()
    # sdpa's implicit causal mask (None) over 5 queries becomes an explicit band
    band = sliding_window_mask(None, torch.zeros(1, 5, 4), 2, "sdpa")[0, 0]
    assert torch.equal(
        band,
        torch.tensor(
            [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool
        ),
    )
    assert sliding_window_mask(causal, hidden, 5, "sdpa") is causal  # the window does not bite: untouched
    assert sliding_window_mask(None, hidden, 3, "flash_attention_2") is None
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        sliding_window_mask(causal, hidden, 3, "flash_attention_2")
