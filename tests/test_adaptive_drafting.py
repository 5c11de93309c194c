"""The adaptive drafting planner (`trl_mtp.adaptive_drafting`): its estimates and its choice, against hand-computed
values. (That any choice is lossless: tests/test_decoding.py and tests/test_decoding_sampling.py.)"""

from __future__ import annotations

import pytest

from trl_mtp.adaptive_drafting import DraftPlanner, batch_bucket


def measured(planner: DraftPlanner, times: dict) -> DraftPlanner:
    """The planner with round times {(batch size, k): seconds} observed once each (no acceptance data)."""
    for (batch_size, k), seconds in times.items():
        planner.round_seconds[(batch_bucket(batch_size), k)] = seconds
        planner.measured_at[(batch_bucket(batch_size), k)] = planner.rounds
    return planner


def test_batch_buckets():
    assert [batch_bucket(b) for b in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [1, 2, 4, 4, 8, 8, 16, 64, 128]


def test_observe_counts_each_verified_draft():
    planner = DraftPlanner(3, acceptance_memory=0.5, prior_weight=0.0)
    planner.observe(4, 2, 0.1, [2, 0, 1])  # row 0 kept both drafts, row 1 none, row 2 the first
    assert planner.verified == [3, 2, 0] and planner.kept == [2, 1, 0]
    planner.observe(4, 3, 0.1, [3])
    assert planner.verified == [2.5, 2.0, 1.0] and planner.kept == [2.0, 1.5, 1.0]  # the past halved
    assert planner.acceptance() == pytest.approx([2.0 / 2.5, 1.5 / 2.0, 1.0])
    planner.observe(4, 0, 0.1, [0])  # a plain round: nothing about acceptance
    assert planner.verified == [2.5, 2.0, 1.0]
    assert planner.round_seconds == {(4, 2): 0.1, (4, 3): 0.1, (4, 0): 0.1}


def test_expected_tokens_per_round():
    planner = DraftPlanner(3, prior_weight=0.0)
    planner.kept, planner.verified = [8.0, 5.0, 1.0], [10.0, 10.0, 10.0]  # a = 0.8, 0.5, 0.1
    assert [planner.expected_tokens(k) for k in range(4)] == pytest.approx([1.0, 1.8, 2.2, 2.24])
    assert DraftPlanner(2).expected_tokens(2) == pytest.approx(1.75)  # the prior: a = 0.5


def test_choice_maximises_tokens_per_second():
    """At batch 1 verifying more tokens costs little: draft 2 (2.2 / 1.3 beats 1.8 / 1.1 and 2.24 / 1.5); at batch 64 a
    verify of k + 1 tokens costs about k + 1 forwards: plain decoding. Maximising tokens per round alone (always D)
    or per-token cost alone (always 0) gives other answers."""
    planner = DraftPlanner(3, prior_weight=0.0)
    planner.kept, planner.verified = [8.0, 5.0, 1.0], [10.0, 10.0, 10.0]
    measured(planner, {(1, 0): 1.0, (1, 1): 1.1, (1, 2): 1.3, (1, 3): 1.5})
    measured(planner, {(64, 0): 1.0, (64, 1): 1.9, (64, 2): 2.8, (64, 3): 3.7})
    planner.rounds = 1
    assert planner.choose(1) == 2
    assert planner.choose(64) == 0
    assert planner.choose(1, limit=1) == 1  # no room for more drafts before the model's last position


def test_drafting_needs_a_predicted_gain_over_plain_decoding():
    """a_1 = 0.25: one draft gives E(1) = 1.25 tokens in 1.2 s against 1 in 1.0 s: 1.25 / 1.2 = 1.042 tokens/s, 4.2%
    over plain decoding, under the 5% margin: plain. At a_1 = 0.3, 1.3 / 1.2 = 1.083 (8.3% over plain): one draft.
    Without the margin (`min_gain=0`) the near-tie drafts."""
    planner = measured(DraftPlanner(1, prior_weight=0.0), {(8, 0): 1.0, (8, 1): 1.2})
    planner.rounds = 1
    planner.kept, planner.verified = [2.5], [10.0]
    assert planner.expected_tokens(1) / 1.2 == pytest.approx(1.0417, abs=1e-4)
    assert planner.choose(8) == 0
    planner.min_gain = 0.0
    assert planner.choose(8) == 1
    planner.min_gain = 0.05
    planner.kept = [3.0]
    assert planner.choose(8) == 1


def test_unmeasured_choices_are_tried_first_largest_first():
    planner = DraftPlanner(2)
    order = []
    for _ in range(3):
        k = planner.choose(8)
        order.append(k)
        planner.observe(8, k, 1.0 + k, [k] * 8)
    assert order == [2, 1, 0]


def test_a_new_bucket_borrows_the_nearest_times_scaled():
    """Rows left the batch (64 -> 32): k = 0 measured at 32 takes half the time it took at 64, so the other choices
    are estimated at half their batch-64 times until measured."""
    planner = measured(DraftPlanner(2), {(64, 0): 2.0, (64, 1): 3.0, (64, 2): 5.0, (32, 0): 1.0})
    assert [planner.seconds(32, k) for k in range(3)] == pytest.approx([1.0, 1.5, 2.5])
    assert DraftPlanner(2).seconds(32, 1) is None


def test_refresh_retries_plain_or_a_neighbour_of_the_best():
    """Every refresh_every-th round re-measures, of plain decoding and the best choice's neighbours, the one measured
    longest ago (the best is 3 here: 2 is older than 0), never a choice further away (1, the oldest overall, which at
    large batches can cost several rounds' time); plain decoding is re-measured too (one slow measurement must not
    lock it out)."""
    times = {(1, 0): 1.0, (1, 1): 1.0, (1, 2): 1.0, (1, 3): 1.0, (1, 4): 3.0}
    planner = measured(DraftPlanner(4, refresh_every=4, prior_weight=0.0), times)
    planner.kept, planner.verified = [9.0, 9.0, 9.0, 1.0], [10.0] * 4  # E = 1, 1.9, 2.71, 3.439, 3.51
    planner.measured_at = {(1, 0): 3, (1, 1): 0, (1, 2): 2, (1, 3): 5, (1, 4): 6}
    planner.rounds = 8
    assert planner.choose(1) == 3  # exploiting: 3.439 / 1.0 beats 3.51 / 3.0
    planner.rounds = 7  # the 8th round: a refresh
    assert planner.choose(1) == 2
    planner.measured_at[(1, 2)] = 7
    assert planner.choose(1) == 0


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_drafts=-1), "max_drafts must be an integer >= 0, got -1"),
        (dict(max_drafts=True), "max_drafts must be an integer >= 0, got True"),
        (dict(max_drafts=2, acceptance_memory=1.0), r"acceptance_memory must be in \[0, 1\), got 1.0"),
        (dict(max_drafts=2, refresh_every=0), "refresh_every must be >= 1, got 0"),
        (dict(max_drafts=2, min_gain=-0.1), "min_gain must be >= 0, got -0.1"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        DraftPlanner(**settings)
