import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mtp.embedded.pretrain import pretrain_base, pretraining_blocks


def test_short_pretrain_and_cache_hit(tokenizer):
    kwargs = dict(preset="tiny-gpt2", task="mix", steps=3, seq_len=32, batch_size=2, seed=0)
    path = pretrain_base(**kwargs)
    info = json.loads((path / "pretrain_info.json").read_text())
    assert info["args"]["steps"] == 3 and info["final_loss"] > 0 and info["wall_time_s"] >= 0
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("1+2=")["input_ids"] == tokenizer("1+2=")["input_ids"]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    mtime = (path / "pretrain_info.json").stat().st_mtime_ns
    start = time.time()
    assert pretrain_base(**kwargs) == path  # cache hit: no retraining
    assert time.time() - start < 5 and (path / "pretrain_info.json").stat().st_mtime_ns == mtime
    assert pretrain_base(**{**kwargs, "seed": 1}) != path  # other arguments, other entry


def test_out_dir_and_no_cache(tmp_path):
    out = pretrain_base("tiny-qwen3", "copy", steps=2, seq_len=16, batch_size=2, out_dir=tmp_path / "base")
    assert out == tmp_path / "base" and (out / "model.safetensors").exists()
    first = json.loads((out / "pretrain_info.json").read_text())["wall_time_s"]
    pretrain_base("tiny-qwen3", "copy", steps=2, seq_len=16, batch_size=2, out_dir=out, cache=False)
    assert (out / "pretrain_info.json").exists() and first >= 0


def test_blocks_are_deterministic(tokenizer):
    a = pretraining_blocks("mix", tokenizer, 4, 64, seed=0)
    assert a.shape == (4, 64) and torch.equal(a, pretraining_blocks("mix", tokenizer, 4, 64, seed=0))
    star = pretraining_blocks("star_graph", tokenizer, 2, 64, seed=0)
    assert "graph:" in tokenizer.decode(star[0])


@pytest.mark.parametrize(
    "kwargs,bad",
    [
        (dict(preset="nope"), "nope"),
        (dict(task="nope"), "nope"),
        (dict(steps=-1), "-1"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0), "lr"),
        (dict(task_params={"star_graph": {"degree": -2}}), "degree"),
    ],
)
def test_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        pretrain_base(**kwargs)


@pytest.mark.slow
def test_pretraining_on_a_task_learns(tokenizer):
    """End to end: a tiny base trained briefly on `copy` alone models held-out copy examples far better than
    chance and answers with numbers (copying them exactly takes longer than a test may run)."""
    import math

    from trl_mtp.embedded.evaluate import evaluate_task, heldout_nll
    from trl_mtp.embedded.tasks import get_task

    path = pretrain_base("tiny-llama", "copy", steps=150, seq_len=64, batch_size=16, lr=3e-3)
    info = json.loads((path / "pretrain_info.json").read_text())
    assert info["final_loss"] < info["losses"][0] / 2
    model = AutoModelForCausalLM.from_pretrained(path)
    data = get_task("copy").eval(20)
    nll = heldout_nll(model, tokenizer, [p + c for p, c in zip(data["prompt"], data["completion"])])
    assert nll < math.log(len(tokenizer)) / 3
    result = evaluate_task(model, tokenizer, get_task("copy"), n=20, batch_size=20)
    assert all(c[:1].isdigit() for _, c, _ in result["samples"]), result["samples"]
