"""`Trunk`: the parts of a Hugging Face causal LM that MTP heads read, found through the model's own accessors.

- decoder: `model.get_decoder()` (LlamaModel, Qwen3Model, GPT2Model, ...);
- layers: the `nn.ModuleList` child of the decoder with `num_hidden_layers` entries (`layers`, GPT-2's `h`);
- final norm: the last direct child of the decoder whose class name contains "Norm" (`norm`, GPT-2's `ln_f`);
- embeddings / LM head: `get_input_embeddings()` / `get_output_embeddings()`.

Capture contract (what trainers rely on): two forward pre-hooks stay installed on the base model for the wrapper's
lifetime and fire in every forward path (our forward, TRL's fused-LM-head forward that calls the backbone directly,
`generate`). After any trunk forward:
- `trunk.hidden` is the input of the final norm, [B, T, d] (pre-norm last hidden state, graph attached);
- `trunk.layer_args` / `trunk.layer_kwargs` are what the last decoder layer was called with (processed attention
  mask, rotary `position_embeddings`, position ids, ...); `trunk.layer_call_kwargs()` turns them into keyword
  arguments for calling a *copy* of that layer (cache dropped).
Capture stores references only (no copies).
"""

from __future__ import annotations

import contextlib
import copy
import inspect

import torch
from torch import nn

_CACHE_ARGS = ("past_key_values", "past_key_value", "layer_past")


def gathered(params):
    """Context in which DeepSpeed ZeRO-3 partitioned parameters among `params` hold their full data (read only);
    nothing to do for any other parameter."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned)


def call_module(module: nn.Module, x: torch.Tensor, frozen: bool) -> torch.Tensor:
    """`module(x)`; with `frozen`, its parameters are detached for this call, so none of them gets a gradient."""
    if not frozen:
        return module(x)
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))


class Trunk:
    """Accessors and hidden-state capture for a causal LM (a plain object: it owns no parameters)."""

    def __init__(self, model: nn.Module):
        self.model = model
        text_config = model.config.get_text_config()
        self.decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        num_layers = text_config.num_hidden_layers
        lists = [m for m in self.decoder.children() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
        if not lists:
            raise ValueError(f"{type(self.decoder).__name__}: no ModuleList of {num_layers} decoder layers found")
        self.layers = lists[0]
        norms = [m for m in self.decoder.children() if "norm" in type(m).__name__.lower()]
        if not norms:
            raise ValueError(f"{type(self.decoder).__name__}: no final norm module found among its children")
        self.final_norm = norms[-1]
        self.pad_token_id = getattr(text_config, "pad_token_id", None) or 0
        self._layer_params = list(inspect.signature(self.last_layer.forward).parameters.values())
        self._handles: list = []
        self._keep_first = False
        self.clear()
        self.install_hooks()

    # -- modules -----------------------------------------------------------------------------------------
    @property
    def last_layer(self) -> nn.Module:
        return self.layers[-1]

    @property
    def embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def is_checkpointing(self) -> bool:
        """Whether the base model runs with activation (gradient) checkpointing."""
        return bool(getattr(self.model, "is_activation_checkpointing", False))

    def norm(self, hidden: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        return call_module(self.final_norm, hidden, frozen)

    def logits(self, hidden: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Main-head logits of pre-norm hidden states: lm_head(final_norm(hidden))."""
        return call_module(self.lm_head, self.norm(hidden, frozen), frozen)

    def embed(self, token_ids: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        emb = self.embeddings(token_ids)
        return emb.detach() if frozen else emb

    def copy_module(self, module: nn.Module) -> nn.Module:
        """A deep copy of one of the base's modules without our capture hooks: a hook is a bound method of this trunk,
        so a copy made with it would fire into a copied trunk holding a hidden copy of the whole base model.
        A base built under DeepSpeed ZeRO-3 (transformers partitions every model created once a ZeRO-3 config is
        active) holds empty partitions: they are gathered for the copy, whose parameters are then plain full tensors
        (`Parameter.__deepcopy__` copies the data only) that the engine partitions with the rest."""
        with self.hooks_removed(), gathered(module.parameters()):
            return copy.deepcopy(module)

    def copy_final_norm(self) -> nn.Module:
        """A copy of the final norm (same class, eps and scale) for a head's own norms."""
        return self.copy_module(self.final_norm)

    def copy_last_layer(self) -> nn.Module:
        """A copy of the last decoder layer, without its own gradient checkpointing (heads checkpoint themselves,
        following the trunk's setting)."""
        layer = self.copy_module(self.last_layer)
        for module in layer.modules():
            if getattr(module, "gradient_checkpointing", False):
                module.gradient_checkpointing = False
        return layer

    def __deepcopy__(self, memo):
        # copying a wrapper (e.g. a reference model) copies the trunk with it, hooks bound to the copy; the last
        # forward's captured tensors are not copied (they belong to the original's graph)
        new = Trunk.__new__(Trunk)
        memo[id(self)] = new
        captured = ("hidden", "layer_args", "layer_kwargs")
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in captured})
        new.clear()
        return new

    # -- capture -----------------------------------------------------------------------------------------
    def _capture_hidden(self, module, args):
        if not (self._keep_first and self.hidden is not None):
            self.hidden = args[0]

    def _capture_layer_inputs(self, module, args, kwargs):
        if not (self._keep_first and self.hidden is not None):
            self.layer_args, self.layer_kwargs = args[1:], kwargs

    @contextlib.contextmanager
    def keep_first_capture(self):
        """Inside, only the first forward is captured: for trainers whose policy forward is followed by another
        forward through the same modules (DPO's reference pass with LoRA adapters disabled)."""
        self.clear()
        self._keep_first = True
        try:
            yield
        finally:
            self._keep_first = False

    def install_hooks(self):
        if not self._handles:
            self._handles = [
                self.final_norm.register_forward_pre_hook(self._capture_hidden),
                self.last_layer.register_forward_pre_hook(self._capture_layer_inputs, with_kwargs=True),
            ]

    def remove_hooks(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def hooks_removed(self):
        had_hooks = bool(self._handles)
        self.remove_hooks()
        try:
            yield
        finally:
            if had_hooks:
                self.install_hooks()

    def clear(self):
        """Drop the references to the last forward's tensors."""
        self.hidden: torch.Tensor | None = None
        self.layer_args: tuple = ()
        self.layer_kwargs: dict = {}

    def layer_call_kwargs(self) -> dict:
        """Keyword arguments the last layer was called with (positional ones named), minus the hidden states;
        caches are dropped (`None`, `use_cache=False`) so a copy of the layer never writes into the trunk's cache."""
        if self.hidden is None:
            raise RuntimeError("no trunk forward captured yet: run the base model first")
        kwargs: dict = {}
        for param, value in zip(self._layer_params[1:], self.layer_args):
            kwargs[param.name] = value
        kwargs.update(self.layer_kwargs)
        for name in _CACHE_ARGS:
            if name in kwargs:
                kwargs[name] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        return kwargs

    @property
    def layer_parameter_names(self) -> set[str]:
        """Names of the last decoder layer's forward parameters (what a call of a copy of it may be given)."""
        return {param.name for param in self._layer_params}

    def layer_kwargs_with_cache(self, layer_kwargs: dict, cache) -> dict:
        """A copy of a last-layer call's kwargs (from `layer_call_kwargs`) that reads from and writes to `cache`,
        under whichever name this architecture's layer takes its cache (`past_key_values`, GPT-2's `layer_past`):
        for a copy of the layer decoding step by step with a KV cache of its own."""
        kwargs = dict(layer_kwargs)
        for name in _CACHE_ARGS:
            if name in kwargs or name in self.layer_parameter_names:
                kwargs[name] = cache
        kwargs["use_cache"] = True
        return kwargs


def call_layer(layer: nn.Module, hidden: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
    """Run a decoder layer; some architectures return a tuple whose first item is the hidden states."""
    out = layer(hidden, **layer_kwargs)
    return out[0] if isinstance(out, tuple) else out
