import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_mtp.embedded.presets import PRESETS, build_model, count_parameters


@pytest.mark.parametrize("preset", list(PRESETS))
def test_forward_generate_save_load(preset, tokenizer, tmp_path):
    model = build_model(preset, len(tokenizer), tokenizer=tokenizer).eval()
    ids = tokenizer(["1+2=", "def f():"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and 1 <= out.shape[1] - ids["input_ids"].shape[1] <= 5
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, logits, atol=1e-5)
    assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts(preset):
    n = count_parameters(build_model(preset, 2048))
    low, high = (0.5e6, 2e6) if preset.startswith("tiny") else (5e6, 15e6)
    assert low <= n <= high, n


def test_seeded_and_overrides():
    a, b, c = (build_model("tiny-qwen3", 512, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    assert build_model("tiny-gpt2", 512, n_layer=2).config.n_layer == 2
    assert build_model("tiny-llama", 512, attn_implementation="eager").config._attn_implementation == "eager"


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="nope.*tiny-llama.*small-gpt2"):
        build_model("nope", 2048)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("tiny-llama", -1)
