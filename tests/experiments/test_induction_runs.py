"""Named-story induction runs: the score counts a later mention only when the name's second part follows its
first part in the model's greedy prediction."""

import torch
from small_runs import SCRATCH_MODEL

from trl_mtp.embedded.tasks.induction import NamedStories
from trl_mtp.experiments.induction_runs import name_completion, pad_stories, run_induction
from trl_mtp.losses import IGNORE_INDEX


class _Oracle(torch.nn.Module):
    """Predicts, at every position, the true next token of the stories it was built with (or a wrong token)."""

    def __init__(self, inputs, wrong_after=None):
        super().__init__()
        self.inputs, self.wrong_after = inputs, wrong_after

    def forward(self, input_ids):
        nxt = torch.roll(self.inputs, -1, dims=1)
        if self.wrong_after is not None:  # a wrong prediction after one token: only those scores drop
            nxt = torch.where(self.inputs == self.wrong_after, torch.zeros_like(nxt), nxt)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, 200).float()})()


def test_name_completion_scores_by_hand():
    task = NamedStories(characters=2, sentences=6)
    stories = task.stories("eval", 4)
    inputs, labels = pad_stories(stories, task.token_vocab_size() - 1)
    assert (labels == IGNORE_INDEX).sum() == (inputs.size(1) * 4 - sum(len(ids) for ids, _ in stories))
    perfect = name_completion(_Oracle(inputs), task, stories)
    assert perfect["induction"] == [1] * sum(len(later) for _, later in stories)
    assert set(perfect["first_mention"]) == {1} and len(perfect["first_mention"]) == 4 * 2
    first_part = stories[0][0][stories[0][1][0] - 1]  # the first part of the first repeated name
    broken = name_completion(_Oracle(inputs, wrong_after=first_part), task, stories)
    expected = [int(ids[p - 1] != first_part) for ids, later in stories for p in later]
    assert broken["induction"] == expected and 0 in expected


def test_short_runs(tmp_path):
    for name, mtp in (("ntp", None), ("mtp", {"head_type": "parallel", "num_mtp_heads": 1})):
        result = run_induction(
            None,
            tmp_path / name,
            seed=0,
            task={"sentences": 3},
            model=SCRATCH_MODEL,
            steps=3,
            batch_size=4,
            eval_n=5,
            curve_every=3,
            mtp=mtp,
        )
        assert len(result["induction"]) > 0 and [c["step"] for c in result["curve"]] == [3]
        assert (result["final_mtp_losses"] is None) == (mtp is None)
