"""What the from-scratch runs share: padded rows keep each row's own targets and never target the padding; the
model gets MTP heads exactly when asked."""

import pytest

from trl_mtp.experiments.scratch_runs import pad_rows, scratch_lm
from trl_mtp.losses import IGNORE_INDEX
from trl_mtp.model import MTPForCausalLM

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_pad_rows_by_hand():
    inputs, labels = pad_rows([([4, 5, 6], [IGNORE_INDEX, 5, 6]), ([7], [7])], pad_id=9)
    assert inputs.tolist() == [[4, 5, 6], [7, 9, 9]]
    assert labels.tolist() == [[IGNORE_INDEX, 5, 6], [7, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="row 0: 2 labels for 3 tokens"):
        pad_rows([([1, 2, 3], [1, 2])], pad_id=0)


def test_scratch_lm_heads_only_when_asked():
    net, lm = scratch_lm("tiny-llama", 20, eos=19, seed=0, model={**SMALL, "num_key_value_heads": 2}, mtp=None)
    assert lm is net and net.config.vocab_size == 20 and net.config.eos_token_id == 19
    net, lm = scratch_lm("tiny-llama", 20, eos=19, seed=0, model={**SMALL, "num_key_value_heads": 2}, mtp={})
    assert isinstance(lm, MTPForCausalLM) and lm.base_model is net
