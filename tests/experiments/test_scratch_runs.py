"""What the from-scratch runs share: padded rows keep each row's own targets and never target the padding; the
model gets MTP heads exactly when asked."""

import pytest
import torch
from small_runs import SCRATCH_MODEL

from trl_mtp.experiments.scratch_runs import pad_rows, scratch_lm, train_scratch
from trl_mtp.losses import IGNORE_INDEX
from trl_mtp.model import MTPForCausalLM


def test_pad_rows_by_hand():
    inputs, labels = pad_rows([([4, 5, 6], [IGNORE_INDEX, 5, 6]), ([7], [7])], pad_id=9)
    assert inputs.tolist() == [[4, 5, 6], [7, 9, 9]]
    assert labels.tolist() == [[IGNORE_INDEX, 5, 6], [7, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="row 0: 2 labels for 3 tokens"):
        pad_rows([([1, 2, 3], [1, 2])], pad_id=0)


def test_scratch_lm_heads_only_when_asked():
    net, lm = scratch_lm("tiny-llama", 20, eos=19, seed=0, model=SCRATCH_MODEL, mtp=None)
    assert lm is net and net.config.vocab_size == 20 and net.config.eos_token_id == 19
    net, lm = scratch_lm("tiny-llama", 20, eos=19, seed=0, model=SCRATCH_MODEL, mtp={})
    assert isinstance(lm, MTPForCausalLM) and lm.base_model is net


def test_the_heads_are_drawn_from_the_seed():
    """A run's seed fixes its heads as it fixes the base: two builds with the same seed, with random draws between
    them, get the same heads (blockwise heads' shared projection is random while their output is zero at first, so
    an unseeded draw changed the runs' gradients, not their first loss); another seed gets other heads."""
    mtp = {"head_type": "blockwise", "num_mtp_heads": 2}

    def heads(seed):
        torch.rand(7)  # what ran before in the process
        _, lm = scratch_lm("tiny-llama", 20, eos=19, seed=seed, model=SCRATCH_MODEL, mtp=mtp)
        return torch.cat([p.detach().flatten() for p in lm.heads.parameters()])

    first, again, other = heads(0), heads(0), heads(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_train_scratch_records_the_curve_and_the_run():
    net, lm = scratch_lm("tiny-llama", 20, eos=19, seed=0, model=SCRATCH_MODEL, mtp={"num_mtp_heads": 1})
    inputs = torch.randint(0, 19, (8, 6))
    calls = []
    result = train_scratch(
        net,
        lm,
        inputs,
        inputs,
        steps=4,
        batch_size=2,
        lr=1e-3,
        seed=0,
        mtp={"num_mtp_heads": 1},
        curve_every=3,
        score=lambda: {"calls": calls.append(1) or len(calls)},
    )
    assert result["curve"] == [{"step": 3, "calls": 1}, {"step": 4, "calls": 2}]  # every 3 steps, and the last
    assert len(result["losses"]) == 4 and len(result["final_mtp_losses"]) == 1
    assert result["num_parameters"] == sum(p.numel() for p in net.parameters()) and result["seed"] == 0
