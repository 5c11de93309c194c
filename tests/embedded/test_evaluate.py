import math

from trl_mtp.embedded.evaluate import evaluate_task, generate_completions, heldout_nll
from trl_mtp.embedded.tasks import get_task


def test_evaluate_task_shapes(tokenizer, tiny_model):
    model = tiny_model()
    for conversational in (False, True):
        result = evaluate_task(model, tokenizer, get_task("copy"), n=6, batch_size=4, conversational=conversational)
        assert result["n"] == 6 and len(result["correct"]) == 6
        assert set(result["correct"]) <= {0.0, 1.0} and result["accuracy"] == sum(result["correct"]) / 6
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
    assert evaluate_task(model, tokenizer, get_task("copy"), n=0)["n"] == 0


def test_left_padding_gives_same_completions(tokenizer, tiny_model):
    """Batched generation with left padding matches one-at-a-time generation."""
    model = tiny_model("tiny-qwen3")
    prompts = list(get_task("star_graph").eval(3)["prompt"]) + ["1+2="]
    batched = generate_completions(model, tokenizer, prompts, batch_size=4, max_new_tokens=6)
    single = [generate_completions(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single


def test_heldout_nll(tokenizer, tiny_model):
    model = tiny_model("tiny-gpt2")
    texts = get_task("stdlib").eval(3)["text"]
    nll = heldout_nll(model, tokenizer, texts, max_length=64)
    assert math.isfinite(nll) and abs(nll - math.log(len(tokenizer))) < 1.0  # random init: about uniform


def test_evaluate_task_scores_right_answers(tokenizer, monkeypatch):
    """With completions that are the targets (scripted, not generated), accuracy is 1; shifted, 0."""
    import trl_mtp.embedded.evaluate as ev

    task = get_task("sort")
    targets = list(task.eval(5)["completion"])
    monkeypatch.setattr(ev, "generate_completions", lambda *a, **k: list(targets))
    assert evaluate_task(None, tokenizer, task, n=5)["accuracy"] == 1.0
    monkeypatch.setattr(ev, "generate_completions", lambda *a, **k: targets[1:] + targets[:1])
    assert evaluate_task(None, tokenizer, task, n=5)["correct"] == [0.0] * 5
