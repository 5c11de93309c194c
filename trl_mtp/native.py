"""transformers' native MTP layers <-> our `sequential` family: import and export.

transformers 5 drafts with a checkpoint's own MTP layers (`generate(..., use_mtp=True)`, `MtpModel`, `num_mtp_layers`
in the config). Each native layer is one DeepSeek-V3 MTP module, the same computation as a `sequential` depth:

    z_i = Block_i(eh_proj_i([enorm_i(emb(x_{t+i})); hnorm_i(s_{i-1})])),   logits_i = lm_head(post_norm_i(z_i)),

where the native chain feeds each depth the *normed* state: s_0 = final_norm(h) (the main model's last hidden state,
as `output_hidden_states` returns it) and s_i = post_norm_i(z_i). On an architecture with a native layout
(`trl_mtp.heads.native_layouts`) the sequential family follows that chain (`SequentialHeads.native_chain`), so
imported layers give MtpModel's outputs and trained layers export unchanged.

- import: `load_native(dir)` reads the base and its layers with transformers' own `MtpModel.from_pretrained`, so the
  key conversions are transformers'; `MTPForCausalLM.from_pretrained` (on a checkpoint without `mtp_config.json`)
  puts them into sequential heads with `copy_native_layers`; `init_from_native(model)` (what `from_base` does for
  sequential heads) starts the first depths from them.
- export: `export_native(model, dir)` writes the base with `num_mtp_layers = D` and the layers under the keys the
  architecture's checkpoints use (reverted through the base's own weight conversions, e.g. fused MoE experts back to
  one tensor per expert), so stock `generate(use_mtp=True)` drafts with them.

Stock transformers finds MTP tensors through the class's `_keys_to_ignore_on_load_unexpected`, which names the real
checkpoints' layer index (DeepSeek-V3: 61; GLM-4.5: 92 or 46; Mellum: `mtp.`). A DeepSeek/GLM model with another
depth needs `allow_stock_mtp(model)` on the loaded model before `generate(use_mtp=True)`.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager

import torch

from trl_mtp.heads.native_layouts import ARCHITECTURES, native_layout


def native_mtp_layers(directory) -> int:
    """`num_mtp_layers` of a local checkpoint of a supported architecture (0 when it has none or is not one)."""
    path = os.path.join(str(directory), "config.json")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        config = json.load(f)
    config = config.get("text_config", config)
    if config.get("model_type") not in ARCHITECTURES:
        return 0
    return int(config.get("num_mtp_layers") or config.get("num_nextn_predict_layers") or 0)


# ----------------------------------------------------------------------------------------------------------------------
# stock transformers: where it looks for MTP tensors
# ----------------------------------------------------------------------------------------------------------------------
def allow_stock_mtp(base) -> None:
    """Let stock transformers find this model's MTP tensors: an instance-level `_keys_to_ignore_on_load_unexpected`
    naming its own MTP layer indices (the class attribute names the real checkpoints' depth only)."""
    layout = native_layout(base.config)
    text = base.config.get_text_config()
    n = text.num_mtp_layers or 1
    base._keys_to_ignore_on_load_unexpected = [
        re.escape(layout.prefix(text.num_hidden_layers, i)) + ".*" for i in range(n)
    ]


@contextmanager
def _stock_mtp_allowed(base):
    had = "_keys_to_ignore_on_load_unexpected" in vars(base)
    old = vars(base).get("_keys_to_ignore_on_load_unexpected")
    allow_stock_mtp(base)
    try:
        yield
    finally:
        if had:
            base._keys_to_ignore_on_load_unexpected = old
        else:
            del base._keys_to_ignore_on_load_unexpected


def stock_mtp_model(base):
    """transformers' own `MtpModel` with the checkpoint's layers (the base must come from `from_pretrained(dir)`)."""
    from transformers.modeling_layers import MtpModel

    with _stock_mtp_allowed(base):
        try:
            return MtpModel.from_pretrained(base, device_map={"": base.device})
        except RuntimeError as err:  # transformers raises when MTP tensors are missing
            raise ValueError(
                f"{base.config.name_or_path}: no native MTP weights ({str(err).splitlines()[0]})"
            ) from None


# ----------------------------------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------------------------------
def copy_native_layers(heads, mtp) -> int:
    """Put MtpModel's layers into the first depths of sequential `heads` (modules moved, not copied); -> how many."""
    if getattr(mtp, "use_shared_post_norm", False) or not mtp.use_post_norm:
        raise ValueError(
            f"{type(heads.trunk.model).__name__}: a shared chain norm is not supported by the sequential family"
        )
    n = min(len(mtp.layers), heads.num_depths)
    for depth, layer in zip(heads.layers[:n], mtp.layers[:n]):
        depth.enorm, depth.hnorm, depth.eh_proj = layer.enorm, layer.hnorm, layer.eh_proj
        depth.mtp_block = layer.mtp_block
        depth.shared_head.norm = layer.post_norm
    return n


def load_native(directory, **load_kwargs):
    """What a checkpoint with native MTP layers holds: its base model (`load_kwargs` go to `from_pretrained`) and
    transformers' `MtpModel` with its layers. `MTPForCausalLM.from_pretrained` builds sequential heads from them."""
    from transformers import AutoModelForCausalLM

    if native_mtp_layers(directory) < 1:
        raise ValueError(
            f"{directory}: not a checkpoint with native MTP layers (no num_mtp_layers for a supported "
            f"architecture: {', '.join(ARCHITECTURES)})"
        )
    base = AutoModelForCausalLM.from_pretrained(directory, **load_kwargs)
    return base, stock_mtp_model(base)


def init_from_native(model) -> int:
    """Start the sequential heads' first depths from the base checkpoint's native MTP layers, when it has some;
    returns how many depths were initialised (0: none, the heads keep their default initialisation)."""
    source = getattr(model.base_model.config, "name_or_path", "")
    if model.heads.head_type != "sequential" or not source or not native_mtp_layers(source):
        return 0
    try:
        mtp = stock_mtp_model(model.base_model)
    except ValueError:  # the config names MTP layers (DeepSeek's default is 1) but the checkpoint has none
        return 0
    return copy_native_layers(model.heads, mtp)


# ----------------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------------
def native_state_dict(model) -> dict[str, torch.Tensor]:
    """The heads' tensors under the checkpoint keys of the base's architecture (model layout, not yet reverted)."""
    layout = native_layout(model.config)
    if model.heads.head_type != "sequential":
        raise ValueError(f"head_type={model.heads.head_type!r}: only sequential heads have a native MTP layout")
    D = model.heads.num_depths
    if layout.max_layers is not None and layout.max_layers < D:
        raise ValueError(
            f"num_mtp_heads={D}: {model.config.get_text_config().model_type} checkpoints hold at most "
            f"{layout.max_layers} MTP layer(s)"
        )
    L = model.config.get_text_config().num_hidden_layers
    state = {}
    for i, depth in enumerate(model.heads.layers):
        for name, tensor in depth.state_dict().items():
            own = next((ours for ours in layout.names if name.startswith(ours + ".")), None)
            if own is not None:
                key = layout.prefix(L, i) + layout.names[own] + name[len(own) :]
            elif name.startswith("mtp_block."):
                key = layout.block_prefix(L, i) + name[len("mtp_block.") :]
            else:
                raise ValueError(f"sequential depth {i + 1}: parameter {name!r} has no place in the native layout")
            state[key] = tensor.detach().contiguous()
    return state


def export_native(model, directory, tokenizer=None) -> list[str]:
    """Write `model` (an `MTPForCausalLM` with sequential heads) as a checkpoint in the native layout: the base with
    `num_mtp_layers = D`, plus the heads' tensors among its weights. Returns the MTP keys written."""
    from transformers.core_model_loading import revert_weight_conversion

    base = model.base_model
    if getattr(base, "_hf_peft_config_loaded", False) or hasattr(base, "peft_config"):
        raise ValueError(
            "the model has LoRA adapters: merge them first (MTPForCausalLM.from_pretrained(run, "
            "merge_lora=True), or peft's merge_and_unload) and export the merged model"
        )
    _check_stock_attention(base.config)
    state = native_state_dict(model)
    # the block's tensors go through the base's own save-time conversions (e.g. fused experts -> one per expert)
    state = {k: v.contiguous() for k, v in revert_weight_conversion(base, state).items()}
    text = base.config.get_text_config()
    old = text.num_mtp_layers
    text.num_mtp_layers = model.heads.num_depths
    try:
        base.save_pretrained(directory)
    finally:
        text.num_mtp_layers = old
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    _add_tensors(str(directory), state)
    return sorted(state)


def _check_stock_attention(config) -> None:
    """Refuse a checkpoint stock transformers cannot draft with: its latent (MLA) attention (DeepSeek-V3) expands the
    latent KV to num_attention_heads heads, yet repeats them num_attention_heads // num_key_value_heads times, so with
    fewer KV heads a forward of several tokens after a cached prefix (use_mtp's verify step) fails inside sdpa.
    No weight depends on num_key_value_heads there; released checkpoints set it equal."""
    text = config.get_text_config()
    if getattr(text, "kv_lora_rank", None) and text.num_key_value_heads != text.num_attention_heads:
        raise ValueError(
            f"num_key_value_heads={text.num_key_value_heads} with num_attention_heads="
            f"{text.num_attention_heads}: transformers' latent attention fails on a cache unless they are "
            "equal; set config.num_key_value_heads = config.num_attention_heads (no weight depends on it)"
        )


def _add_tensors(directory: str, state: dict) -> None:
    """Add tensors to a saved checkpoint: into its single file, or as one more shard of a sharded one."""
    from safetensors.torch import load_file, save_file

    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            index = json.load(f)
        save_file(state, os.path.join(directory, "model-mtp.safetensors"), metadata={"format": "pt"})
        index["weight_map"].update({k: "model-mtp.safetensors" for k in state})
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2)
        return
    path = os.path.join(directory, "model.safetensors")
    save_file({**load_file(path), **state}, path, metadata={"format": "pt"})
