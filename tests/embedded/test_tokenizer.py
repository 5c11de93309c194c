import filecmp
import os
import time

import pytest

from trl_mtp.embedded.tokenizer import build_tokenizer, get_tokenizer, tokenizer_dir


def test_build_is_byte_identical(tmp_path):
    a, b = build_tokenizer(tmp_path / "a"), build_tokenizer(tmp_path / "b")
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(names)
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x + 1\n",
        "12345+678=13023",
        "héllo wörld ✓ 😀",
        "graph:12>5,5>33|12>33=",
        "  leading and trailing  ",
        "",
    ],
)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.tokenize("x = 1234567890")
    assert [t for t in tokens if any(c.isdigit() for c in t)] == list("1234567890")


def test_special_tokens(tokenizer):
    assert len(tokenizer) == 2048
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert len(ids) == 3 and None not in ids
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") != tokenizer.unk_token_id
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""


def test_chat_template_marks_assistant_tokens(tokenizer):
    messages = [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\n1+2=<|eos|>\n<|assistant|>\n3<|eos|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|assistant|>\n")
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert marked == tokenizer("3", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_save_load_same_encodings(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "for i in range(10):\n    print(i * 2)  # 42"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.chat_template == tokenizer.chat_template


def test_get_tokenizer_is_cached(tokenizer):
    path = tokenizer_dir() / "tokenizer.json"
    mtime = path.stat().st_mtime_ns
    start = time.time()
    again = get_tokenizer()
    assert path.stat().st_mtime_ns == mtime and time.time() - start < 5
    assert again("abc 123")["input_ids"] == tokenizer("abc 123")["input_ids"]
