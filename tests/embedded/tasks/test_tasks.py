import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_mtp.embedded.tasks import PROMPT_TASKS, TASKS, get_task
from trl_mtp.embedded.tasks.base import split_of


def test_registry():
    assert set(TASKS) == {"arithmetic", "star_graph", "sort", "copy", "stdlib"}
    assert set(PROMPT_TASKS) == set(TASKS) - {"stdlib"}
    for cls in TASKS.values():
        assert cls.description


@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_deterministic_and_seeded(name):
    a, b, c = get_task(name, seed=1), get_task(name, seed=1), get_task(name, seed=2)
    assert a.train(50).to_list() == b.train(50).to_list()
    assert a.eval(20).to_list() == b.eval(20).to_list()
    assert a.train(50).to_list() != c.train(50).to_list()
    assert a.train(20).to_list() == a.train(50).to_list()[:20]  # a longer split extends a shorter one


@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_splits_disjoint(name):
    task = get_task(name)
    train = {p.key for p in task.problems("train", 2000)}
    evals = {p.key for p in task.problems("eval", 200)}
    assert not train & evals
    assert {split_of(k) for k in train} == {"train"} and {split_of(k) for k in evals} == {"eval"}
    assert not set(task.train(2000)["prompt"]) & set(task.eval(200)["prompt"])


@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_reward_plain(name):
    task = get_task(name)
    data = task.eval(20)
    prompts, answers = data["prompt"], data["completion"]
    assert task.reward(prompts, answers) == [1.0] * 20
    assert task.reward(prompts, [" " + a + "\n" for a in answers]) == [1.0] * 20  # surrounding space ignored
    wrong = [a[:-1] + ("0" if a[-1] != "0" else "1") for a in answers]
    assert task.reward(prompts, wrong) == [0.0] * 20
    assert task.reward(prompts, [a + "," + a for a in answers]) == [0.0] * 20  # extra text is wrong


@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_reward_conversational(name):
    task = get_task(name)
    data = task.eval(5, conversational=True)
    assert data[0]["prompt"][0]["role"] == "user" and data[0]["completion"][0]["role"] == "assistant"
    assert task.reward(data["prompt"], data["completion"]) == [1.0] * 5
    plain = task.eval(5)
    assert task.reward(plain["prompt"], data["completion"]) == [1.0] * 5  # mixed formats
    assert task.reward(data["prompt"], plain["completion"]) == [1.0] * 5


@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_reward_malformed_scores_zero(name):
    task = get_task(name)
    prompt = task.eval(1)["prompt"][0]
    bad = [
        None,
        5,
        "",
        "garbage",
        {},
        [],
        [{"role": "assistant"}],
        [{"role": "user", "content": "1"}],
        [{"role": "assistant", "content": None}],
        b"bytes",
    ]
    assert task.reward([prompt] * len(bad), bad) == [0.0] * len(bad)
    assert task.reward(["not a prompt", None, 7], ["1", "1", "1"]) == [0.0] * 3


def test_arithmetic():
    task = get_task("arithmetic", digits=2, op="*")
    assert task.solve("12*34=") == "408"
    for p in task.problems("train", 50):
        a, b = p.prompt[:-1].split("*")
        assert int(a) < 100 and int(b) < 100 and p.answer == str(int(a) * int(b))


def test_star_graph_structure():
    task = get_task("star_graph", degree=4, path_length=5, nodes=30)
    for p in task.problems("train", 50):
        edges_text, query = p.prompt[len("graph:") : -1].split("|")
        edges = [tuple(e.split(">")) for e in edges_text.split(",")]
        start, goal = query.split(">")
        assert len(edges) == 4 * 4 and len({b for _, b in edges}) == 16
        assert sum(a == start for a, _ in edges) == 4  # degree arms leave the centre
        path = p.answer.split(",")
        assert len(path) == 5 and path[0] == start and path[-1] == goal
        assert all((a, b) in edges for a, b in zip(path, path[1:]))


@settings(max_examples=30, deadline=None)
@given(degree=st.integers(1, 5), path_length=st.integers(2, 6), seed=st.integers(0, 1000))
def test_star_graph_solve_matches_generator(degree, path_length, seed):
    task = get_task("star_graph", degree=degree, path_length=path_length, nodes=degree * path_length + 5, seed=seed)
    for p in task.problems("train", 3):
        assert task.reward([p.prompt], [p.answer]) == [1.0]


def test_sort_and_copy():
    assert get_task("sort").solve("sort:31,7,58=") == "7,31,58"
    assert get_task("copy").solve("copy:31,7,58=") == "31,7,58"
    assert get_task("sort").reward(["copy:31,7,58="], ["31,7,58"]) == [0.0]  # another task's prompt


@pytest.mark.parametrize(
    "name,params,bad",
    [
        ("nope", {}, "nope"),
        ("arithmetic", {"digits": -1}, "digits"),
        ("arithmetic", {"op": "/"}, "op"),
        ("arithmetic", {"bogus": 1}, "bogus"),
        ("star_graph", {"nodes": 5}, "nodes=5"),
        ("sort", {"length": "3"}, "length"),
        ("copy", {"seed": -2}, "seed"),
    ],
)
def test_bad_parameters(name, params, bad):
    with pytest.raises(ValueError, match=bad):
        get_task(name, **params)


def test_bad_sizes():
    with pytest.raises(ValueError, match="-1"):
        get_task("sort").train(-1)
    with pytest.raises(ValueError, match="-3"):
        get_task("stdlib").eval(-3)
    assert len(get_task("copy").eval(0)) == 0
    with pytest.raises(ValueError, match="too few"):
        get_task("arithmetic", digits=1).eval(1000)  # only 100 one-digit problems exist


def test_stdlib_split():
    task = get_task("stdlib", chunk_chars=500)
    train, evals = {r for r, _ in task.files("train")}, {r for r, _ in task.files("eval")}
    assert train and evals and not train & evals
    assert len(evals) < len(train) / 5
    a, b = task.train(10), get_task("stdlib", chunk_chars=500).train(10)
    assert a["text"] == b["text"] and all(len(t) >= 500 for t in a["text"][:-1])
    assert set(a["text"]).isdisjoint(task.eval(50)["text"])


def test_datasets_are_trl_formats(tokenizer):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    task = get_task("arithmetic")
    assert not is_conversational(task.train(1)[0])
    example = task.train(1, conversational=True)[0]
    assert is_conversational(example)
    rendered = maybe_apply_chat_template(example, tokenizer)
    assert rendered["prompt"].endswith("<|assistant|>\n") and rendered["completion"].startswith(
        example["completion"][0]["content"]
    )
