"""Polynomial-arithmetic runs: only the answer is a target, and a problem scores 1 exactly when the greedy answer
(each coefficient fed back) is its value, whatever the order the problems were batched in."""

import pytest
import torch
from small_runs import SCRATCH_MODEL

from trl_mtp.embedded.tasks.polynomial import PolynomialArithmetic
from trl_mtp.experiments.polynomial_runs import encode_rows, exact_match, run_polynomial
from trl_mtp.losses import IGNORE_INDEX


class _Lookup(torch.nn.Module):
    """Predicts the next token of each known row from the prefix it is given; for the problems in `spoil`
    (index -> token), that token in place of the answer's last coefficient."""

    def __init__(self, rows, vocab, spoil=None):
        super().__init__()
        self.next, self.vocab = {}, vocab
        for index, (ids, _) in enumerate(rows):
            for pos in range(1, len(ids)):
                self.next[tuple(ids[:pos])] = ids[pos]
            if index in (spoil or {}):
                self.next[tuple(ids[:-2])] = spoil[index]  # ids end with the last coefficient, then the end token

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for row, ids in enumerate(input_ids.tolist()):
            logits[row, -1, self.next[tuple(ids)]] = 1.0
        return type("Out", (), {"logits": logits})()


def test_rows_target_the_answer_only():
    task = PolynomialArithmetic(coefficients=2)
    problem = task.problems("train", 1)[0]
    ((ids, labels),) = encode_rows(task, [problem])
    prompt, answer = task.encode(problem.prompt), task.encode(problem.answer)
    assert ids == prompt + answer + task.encode("<eos>")
    assert labels == [IGNORE_INDEX] * len(prompt) + answer + task.encode("<eos>")


def test_exact_match_scores_each_problem_by_hand():
    task = PolynomialArithmetic(min_ops=1, max_ops=3)
    problems = task.problems("eval", 30)
    rows = encode_rows(task, problems)
    assert len({len(task.encode(p.prompt)) for p in problems}) == 3  # three batches of different prompt lengths
    assert exact_match(_Lookup(rows, task.token_vocab_size()), task, problems) == [1] * 30
    # a wrong last coefficient: those problems, and only those, score 0
    spoil = {i: (int(problems[i].answer.split()[-1]) + 1) % 7 for i in (0, 7, 13, 29)}
    lookup = _Lookup(rows, task.token_vocab_size(), spoil=spoil)
    assert exact_match(lookup, task, problems) == [int(i not in spoil) for i in range(30)]


def test_short_runs(tmp_path):
    for name, mtp in (("ntp", None), ("mtp", {"head_type": "parallel", "num_mtp_heads": 1})):
        result = run_polynomial(
            None,
            tmp_path / name,
            seed=0,
            task={"max_ops": 2},
            model=SCRATCH_MODEL,
            steps=3,
            batch_size=4,
            eval_n=6,
            ood_ops=3,
            curve_every=3,
            mtp=mtp,
        )
        assert len(result["exact"]) == len(result["ood_exact"]) == 6 and [c["step"] for c in result["curve"]] == [3]
        assert (result["final_mtp_losses"] is None) == (mtp is None)
    with pytest.raises(ValueError, match="ood_ops=2"):
        run_polynomial(None, tmp_path / "bad", seed=0, task={"max_ops": 2}, model=SCRATCH_MODEL, steps=1, ood_ops=2)
