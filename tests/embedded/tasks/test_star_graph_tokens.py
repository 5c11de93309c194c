"""The one-token-per-node encoding of star-graph problems (the paper's tokenisation, for models trained from
scratch on the task)."""

import pytest

from trl_mtp.embedded.tasks import get_task
from trl_mtp.embedded.tasks.star_graph import SYMBOLS


def test_encoding_by_hand():
    task = get_task("star_graph", nodes=50)
    gt, comma, bar, eq = 50, 51, 52, 53  # the symbols follow the 50 node labels
    assert task.encode_prompt("graph:12>5,5>33|12>33=") == [12, gt, 5, comma, 5, gt, 33, bar, 12, gt, 33, eq]
    assert task.encode_path("12,5,33") == [12, 5, 33]
    assert task.token_vocab_size() == 50 + len(SYMBOLS)
    assert task.symbol_id("$") == 55


def test_one_token_per_node_and_fixed_prompt_length():
    task = get_task("star_graph", degree=2, path_length=4, nodes=20)
    lengths = set()
    for problem in task.problems("train", 50):
        ids = task.encode_prompt(problem.prompt)
        nodes = [t for t in ids if t < task.nodes]
        assert len(nodes) == 2 * 2 * 3 + 2  # every edge's two ends, then start and goal
        assert max(ids) < task.token_vocab_size()
        lengths.add(len(ids))
        assert len(task.encode_path(problem.answer)) == 4
    assert lengths == {4 * 2 * 3 - 1 + 5}  # "a>b," per edge (no comma after the last), then "|s>g="


def test_bad_input():
    task = get_task("star_graph")
    with pytest.raises(ValueError, match="not a star-graph prompt"):
        task.encode_prompt("sort:1,2=")
    with pytest.raises(ValueError, match="unknown star-graph symbol"):
        task.symbol_id("#")
