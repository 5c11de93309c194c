"""Star-graph runs from scratch: the encodings of each objective, the scores that tell the Clever Hans answer
apart, and one short run per objective."""

import pytest
import torch

from trl_mtp.embedded.tasks import get_task
from trl_mtp.embedded.tasks.base import Problem
from trl_mtp.experiments import star_graph_runs
from trl_mtp.experiments.star_graph_runs import encode_problems, greedy_paths, run_star_graph, score_paths
from trl_mtp.losses import IGNORE_INDEX

TASK = dict(degree=2, path_length=3, nodes=10)
# centre 0 with arms 0-1-2 and 0-3-4; the goal is 4
PROBLEM = Problem("graph:0>1,3>4,1>2,0>3|0>4=", "0,3,4", "k")


def test_encodings_of_each_objective():
    task = get_task("star_graph", **TASK)
    ids, labels, prompt_len = encode_problems(task, [PROBLEM])
    assert prompt_len == 20 and ids[0, prompt_len:].tolist() == [0, 3, 4]
    assert (labels[0, :prompt_len] == IGNORE_INDEX).all() and labels[0, prompt_len:].tolist() == [0, 3, 4]
    tl_ids, tl_labels, _ = encode_problems(task, [PROBLEM], teacherless=True)
    assert tl_ids[0, prompt_len:].tolist() == [task.symbol_id("$")] * 3  # the path is never an input
    assert tl_labels.equal(labels) and tl_ids[0, :prompt_len].equal(ids[0, :prompt_len])
    _, rev_labels, _ = encode_problems(task, [PROBLEM], target="reversed")
    assert rev_labels[0, prompt_len:].tolist() == [4, 3, 0]
    with pytest.raises(ValueError, match="target='sideways'"):
        encode_problems(task, [PROBLEM], target="sideways")


def test_scores_tell_the_clever_hans_answer_apart():
    task = get_task("star_graph", **TASK)
    predicted = torch.tensor([[0, 3, 4], [0, 1, 2], [0, 3, 2], [4, 3, 0]])
    scores = score_paths(task, [PROBLEM] * 4, predicted, "path")
    assert scores["correct"] == [1, 0, 0, 0]
    assert scores["valid"] == [1, 1, 0, 0]  # the wrong arm is a valid path: the cheat's answer
    assert scores["first_step"] == [1, 0, 1, 1]  # the node after the start alone
    reversed_scores = score_paths(task, [PROBLEM], torch.tensor([[4, 3, 0]]), "reversed")
    assert reversed_scores == {"correct": [1], "first_step": [1], "valid": [1]}


class _Scripted(torch.nn.Module):
    """Predicts token (last input + 1) at every position, to check how paths are decoded."""

    def forward(self, input_ids):
        logits = torch.nn.functional.one_hot((input_ids + 1) % 30, 30).float()
        return type("Out", (), {"logits": logits})()


def test_greedy_paths_feed_back_or_read_one_forward():
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    assert greedy_paths(_Scripted(), ids, 3, teacherless=False).tolist() == [[8, 9]]  # each prediction fed back
    assert greedy_paths(_Scripted(), ids, 3, teacherless=True).tolist() == [[8, 1]]  # read off the given inputs


@pytest.mark.parametrize(
    "objective",
    [{}, {"mtp": {"head_type": "parallel", "num_mtp_heads": 2}}, {"teacherless": True}, {"target": "reversed"}],
)
def test_short_run_of_each_objective(tmp_path, objective):
    model = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    }
    result = run_star_graph(
        None, tmp_path, seed=0, task=TASK, model=model, steps=4, batch_size=4, eval_n=6, curve_every=2, **objective
    )
    assert len(result["correct"]) == len(result["valid"]) == 6
    assert [c["step"] for c in result["curve"]] == [2, 4]
    assert (result["final_mtp_losses"] is not None) == ("mtp" in objective)
    assert (tmp_path / "result.json").exists()


def test_mtp_and_teacherless_together_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one objective"):
        star_graph_runs.run_star_graph(None, tmp_path, seed=0, task=TASK, model={}, steps=1, mtp={}, teacherless=True)


def test_node_tokenizer_is_the_one_token_per_node_encoding():
    task = get_task("star_graph", **TASK)
    tokenizer = star_graph_runs.node_tokenizer(task)
    assert tokenizer(PROBLEM.prompt, add_special_tokens=False)["input_ids"] == task.encode_prompt(PROBLEM.prompt)
    assert tokenizer(PROBLEM.prompt)["input_ids"] == task.encode_prompt(PROBLEM.prompt)  # no BOS: none was trained
    path = task.encode_path(PROBLEM.answer)
    assert tokenizer.decode(path + [task.symbol_id("<eos>")], skip_special_tokens=True) == "0 3 4"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == task.symbol_id("<eos>")
