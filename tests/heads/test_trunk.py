"""The trunk's public seams the decoding engine uses (`Trunk.layer_kwargs_with_cache`, `layer_parameter_names`), and
the engine reaching into no private name of the package's other modules."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from transformers import DynamicCache

import trl_mtp.decoding
from trl_mtp.config import MTPConfig
from trl_mtp.embedded.presets import build_model
from trl_mtp.model import MTPForCausalLM

# transformers' own generation internals, which `generate` itself calls and which have no public equivalent
TRANSFORMERS_INTERNALS = {
    "_prepare_generation_config",
    "_prepare_generated_length",
    "_prepare_special_tokens",
    "_get_logits_processor",
    "_eos_token_tensor",
    "_pad_token_tensor",
    "_attn_implementation",
}


def private_reach_ins(source: str) -> set[str]:
    """Private names a module reads from other objects (`x._y` with x not self, y not its own) or imports
    (`from m import _y`)."""
    names, own = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            own.add(node.name)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            names |= {alias.name for alias in node.names if alias.name.startswith("_")}
    return names - own


def test_decoding_uses_public_seams_only():
    source = Path(trl_mtp.decoding.__file__).read_text()
    assert private_reach_ins(source) <= TRANSFORMERS_INTERNALS, private_reach_ins(source) - TRANSFORMERS_INTERNALS
    before = "from trl_mtp.heads.trunk import _CACHE_ARGS\nnames = {p.name for p in trunk._layer_params}\n"
    assert private_reach_ins(before) == {"_CACHE_ARGS", "_layer_params"}  # what the engine used to reach for


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_layer_kwargs_with_cache_names_the_layers_own_cache_argument(preset):
    small = dict(n_layer=2) if "gpt2" in preset else dict(num_hidden_layers=2)
    model = MTPForCausalLM(build_model(preset, 64, seed=0, **small), MTPConfig(num_mtp_heads=2)).eval()
    trunk = model.trunk
    names = set(inspect.signature(trunk.last_layer.forward).parameters)
    assert trunk.layer_parameter_names == names
    cache = DynamicCache()
    kwargs = trunk.layer_kwargs_with_cache({"attention_mask": None}, cache)
    cache_names = [name for name, value in kwargs.items() if value is cache]
    assert cache_names and set(cache_names) <= names and kwargs["use_cache"] is True
    assert kwargs["attention_mask"] is None
