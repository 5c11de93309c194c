"""The modules PPO trains and queries: the policy-and-critic module tree, the value head, per-token scores of a
sequence-classification model (reward model or separate value model), and switching their dropout off.

Scores are read per token from the classification head and indexed with our own attention mask, never with the
model's pad-token search, so left padding, right padding and a pad id the policy sampled all score the same
(the former implementation assumed right padding in `get_reward`).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from trl.trainer.utils import disable_dropout_in_model

from trl_mtp.heads import Trunk
from trl_mtp.trainers.ppo_core import position_ids_from_mask


class ValueHead(nn.Module):
    """V(s_t) = w . norm(h_t) + b on the policy's own last hidden state; zero-initialised, so V = 0 at the start
    and the first updates do not chase a random critic."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1).float()


def disable_dropout(model: nn.Module) -> None:
    """Every dropout of `model` off: the `nn.Dropout` modules (TRL's `disable_dropout_in_model`) and the attention
    dropout that Llama-style attention layers apply functionally, from a float `attention_dropout` attribute."""
    disable_dropout_in_model(model)
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def dropout_in(model: nn.Module) -> str | None:
    """The first dropout `disable_dropout` would turn off that is on in `model` ("name: p"), or None: an `nn.Dropout`
    with p > 0, or a positive float `attention_dropout` (Llama-style attention, taken from the config)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return f"{name}: p={module.p}"
        if isinstance(getattr(module, "attention_dropout", None), float) and module.attention_dropout > 0:
            return f"{name}.attention_dropout={module.attention_dropout}"
    return None


def classification_head(model: nn.Module) -> nn.Module:
    """The linear layer that maps hidden states to the labels of a sequence-classification model (`score` in Llama,
    Qwen and GPT-2 style models): the last `nn.Linear` with `num_labels` outputs."""
    num_labels = model.config.num_labels
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not heads:
        raise ValueError(
            f"{type(model).__name__}: no linear layer with num_labels={num_labels} outputs to read scores from"
        )
    return heads[-1]


def per_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] float: the first label's score at every position (what the model would output were the sequence to
    end there), from one forward of `model` with a hook on its classification head."""
    captured = {}
    head = classification_head(model)
    handle = head.register_forward_hook(lambda module, args, output: captured.__setitem__("scores", output))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
    finally:
        handle.remove()
    return captured["scores"][..., 0].float()


def load_sequence_classifier(model, init_kwargs: dict | None, pad_token_id: int | None) -> PreTrainedModel:
    """A sequence-classification model with one label from a path / hub id, or the model given."""
    if isinstance(model, (str, os.PathLike)):
        model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, **(init_kwargs or {}))
    if model.config.pad_token_id is None:  # HF's pooling refuses batches > 1 without one (we index ourselves)
        model.config.pad_token_id = pad_token_id
    return model


class PolicyAndValue(nn.Module):
    """One module tree for the optimizer, DDP and checkpoints: the policy (the causal LM with its MTP heads attached
    as `mtp_heads`, possibly a PEFT model) and its critic: a `ValueHead` on the policy's own hidden state (read from
    the trunk capture of the same forward, no extra pass) or a separate sequence-classification `value_model`."""

    def __init__(
        self, policy: nn.Module, trunk: Trunk, value_model: nn.Module | None = None, value_head: nn.Module | None = None
    ):
        super().__init__()
        self.policy = policy
        self.trunk = trunk  # a plain object (hooks into the policy), not a submodule
        if value_model is None:
            # `value_head`: another head on norm(h_t) returning V [B, T] (the world model's two-hot critic)
            self.value_head = value_head or ValueHead(trunk.model.config.get_text_config().hidden_size)
            self.value_model = None
        else:
            self.value_head = None
            self.value_model = value_model

    @property
    def _keys_to_ignore_on_save(self):
        # read by Trainer when it loads the policy's weights: the heads are saved in their own file
        return getattr(self.policy, "_keys_to_ignore_on_save", None)

    def tie_weights(self) -> None:
        """Tie the policy's (and a separate critic's) LM head to its input embedding again. accelerate's FSDP2
        loading rebuilds the parameters from a state dict and re-ties them only through the root's `tie_weights`:
        without this, the LM head would train as a copy of its own."""
        self.policy.tie_weights()
        if self.value_model is not None:
            self.value_model.tie_weights()

    def generate(self, *args, **kwargs) -> torch.Tensor:
        """The policy's `generate`, called on this module: the trainer registers it as a forward method of the
        sharded root, so FSDP2 gathers the parameters the root holds (embeddings, final norm, LM head) around it."""
        return self.policy.generate(*args, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, T, V], values [B, T]); the trunk keeps this forward's hidden state for the MTP loss."""
        position_ids = position_ids_from_mask(attention_mask)
        logits = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
        if self.value_head is not None:
            values = self.value_head(self.trunk.norm(self.trunk.hidden))  # V(s_t) from the policy's h_t
        else:
            values = per_token_scores(self.value_model, input_ids, attention_mask)
        return logits, values
