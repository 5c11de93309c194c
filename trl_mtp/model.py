"""`MTPForCausalLM`: any Hugging Face causal LM plus D multi-token prediction heads.

    model = MTPForCausalLM.from_base("path/or/hub-id" or a PreTrainedModel, MTPConfig(head_type="parallel"))
    out = model(input_ids, attention_mask=mask, labels=labels)   # out.loss = L_main + lambda * sum_i w_i CE_i
    out.mtp_losses, out.mtp_accuracies, out.mtp_entropies         # detached [D], for logging

Trainer path (no second trunk forward): run the base model any way you like (its own forward, TRL's fused LM
head, generate); the hooks installed by `Trunk` keep that forward's pre-norm hidden state and last-layer kwargs;
then `model.compute_mtp_loss(input_ids, labels, attention_mask, position_ids)` scores the heads on them.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import ModelOutput

from trl_mtp.config import MTPConfig
from trl_mtp.errors import UserInputError
from trl_mtp.heads import MTPHeads, Trunk, build_heads
from trl_mtp.losses import IGNORE_INDEX, MTPLossOutput, mtp_loss, shift_labels
from trl_mtp.native import copy_native_layers, init_from_native, load_native, native_mtp_layers

HEADS_FILE = "mtp_heads.safetensors"
CONFIG_FILE = "mtp_config.json"


# the JSON files of a model folder that loading reads first: a corrupt one is named before a library trace
MODEL_JSON_FILES = (
    "config.json",
    CONFIG_FILE,
    "generation_config.json",
    "adapter_config.json",
    "tokenizer_config.json",
)


def check_model_dir(directory) -> None:
    """Before loading a local model folder: it is a folder, and its JSON files parse. Raises UserInputError naming
    the path and what is wrong. A name that is not on disk passes (a hub id: the loader says what it finds)."""
    path = os.fspath(directory)
    if os.path.isfile(path):
        raise UserInputError(f"{path!r} is a file, not a model folder (give the folder that holds config.json)")
    for name in MODEL_JSON_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            try:
                with open(file) as f:
                    json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise UserInputError(
                    f"{file}: not valid JSON ({err}); the folder is damaged: restore or re-save it"
                ) from None


def check_heads_match(directory, mtp_config: MTPConfig, expected: dict | None = None, state: dict | None = None):
    """The saved head weights fit the heads `mtp_config.json` describes, or UserInputError naming both: from the
    heads file's metadata (what the heads were; cheap, before anything loads), and with `expected` (the built
    heads' state dict) and `state` (the file's) from the tensor names, which older files without metadata need."""
    said = f"{CONFIG_FILE} says head_type={mtp_config.head_type!r}, num_mtp_heads={mtp_config.num_mtp_heads}"
    with safe_open(os.path.join(directory, HEADS_FILE), "pt") as f:
        meta = f.metadata() or {}
    if "head_type" in meta and (meta["head_type"], meta["num_mtp_heads"]) != (
        mtp_config.head_type,
        str(mtp_config.num_mtp_heads),
    ):
        raise UserInputError(
            f"{directory}: {said}, but {HEADS_FILE} holds head_type={meta['head_type']!r}, "
            f"num_mtp_heads={meta['num_mtp_heads']}; restore the matching {CONFIG_FILE}"
        )
    if expected is None:
        return
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        found = "; ".join(
            f"{len(keys)} {what} (e.g. {keys[0]!r})"
            for what, keys in (("tensors missing", missing), ("unexpected tensors", unexpected))
            if keys
        )
        raise UserInputError(
            f"{directory}: {said}, but {HEADS_FILE} holds other heads: {found}; restore the matching {CONFIG_FILE}"
        )


@dataclass
class MTPCausalLMOutput(ModelOutput):
    """`CausalLMOutputWithPast` plus the MTP terms. `loss` = main loss + mtp_lambda * `mtp_loss` (with labels)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    main_loss: torch.FloatTensor | None = None
    mtp_loss: torch.FloatTensor | None = None
    mtp_losses: torch.Tensor | None = None
    mtp_accuracies: torch.Tensor | None = None
    mtp_entropies: torch.Tensor | None = None
    mtp_num_tokens: torch.Tensor | None = None


class MTPForCausalLM(nn.Module):
    """A causal LM (`.base_model`, untouched apart from two capture hooks) with MTP heads (`.heads`)."""

    def __init__(self, base_model: PreTrainedModel, mtp_config: MTPConfig):
        super().__init__()
        self.base_model = base_model
        self.mtp_config = mtp_config
        self.trunk = Trunk(base_model)  # installs the capture hooks for the wrapper's lifetime
        self.heads: MTPHeads = build_heads(self.trunk, mtp_config)

    def set_loss_config(self, config: MTPConfig) -> None:
        """Train these heads with `config`'s loss fields (mode, targets, weights: `LOSS_FIELDS`); what the heads are
        (family, depth, sizes) stays. A run that starts from trained heads sets its own loss this way."""
        self.mtp_config = self.mtp_config.with_loss_of(config)
        self.heads.configure_loss(self.mtp_config)

    # -- construction, save, load --------------------------------------------------------------------
    @classmethod
    def from_base(
        cls, model_or_path: str | os.PathLike | PreTrainedModel, mtp_config: MTPConfig | None = None, **load_kwargs
    ) -> MTPForCausalLM:
        """New heads on a base model (a `PreTrainedModel`, or a path / hub id loaded with `AutoModelForCausalLM`).
        Sequential heads on a checkpoint with native MTP layers start their first depths from those layers."""
        if isinstance(model_or_path, (str, os.PathLike)):
            model_or_path = AutoModelForCausalLM.from_pretrained(model_or_path, **load_kwargs)
        model = cls(model_or_path, mtp_config or MTPConfig())
        init_from_native(model)
        return model

    def save_pretrained(self, save_directory, **kwargs):
        """Base via its own `save_pretrained`; heads in `mtp_heads.safetensors`; config in `mtp_config.json`."""
        os.makedirs(save_directory, exist_ok=True)
        self.base_model.save_pretrained(save_directory, **kwargs)
        self.save_heads(save_directory)

    def save_heads(self, directory, state: dict | None = None) -> None:
        """The heads' weights (`mtp_heads.safetensors`) and config (`mtp_config.json`) in `directory`: the one writer
        of both, for `save_pretrained` and every trainer's checkpoints. `state`: the heads' full tensors when the
        modules hold only a shard (FSDP2 / ZeRO-3 gather them for the Trainer); default the modules' own."""
        os.makedirs(directory, exist_ok=True)
        state = self.heads.state_dict() if state is None else state
        state = {name: t.detach().contiguous().cpu() for name, t in state.items()}
        # what the heads are, so that a mismatching mtp_config.json is named on load (`check_heads_match`)
        metadata = {
            "format": "pt",
            "head_type": self.mtp_config.head_type,
            "num_mtp_heads": str(self.mtp_config.num_mtp_heads),
        }
        save_file(state, os.path.join(directory, HEADS_FILE), metadata=metadata)
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(self.mtp_config.to_dict(), f, indent=2)

    def load_heads(self, directory) -> None:
        """The heads' weights from `directory` (written by `save_heads`), strictly, onto the heads' device."""
        path = os.path.join(directory, HEADS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no MTP heads here; not written by trl-mtp (`save_heads`)")
        state = load_file(path, device=str(self.device))
        check_heads_match(directory, self.mtp_config, self.heads.state_dict(), state)
        self.heads.load_state_dict(state, strict=True)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, merge_lora: bool = False, **load_kwargs) -> MTPForCausalLM:
        """Load what `save_pretrained` wrote, or a checkpoint with transformers-native MTP layers (DeepSeek-V3, GLM-4.5,
        Mellum: loaded as sequential heads, see `trl_mtp.native`); `load_kwargs` go to `from_pretrained` of the base.
        A LoRA run loads as its base with the adapter attached, or, with `merge_lora=True`, with the adapter merged
        into the base's weights (a plain model again, e.g. for `trl-mtp export`)."""
        check_model_dir(directory)
        config_path = os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(config_path) and native_mtp_layers(directory):
            return cls._from_native(directory, **load_kwargs)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path}: not an MTP checkpoint (no {CONFIG_FILE})")
        with open(config_path) as f:
            mtp_config = MTPConfig.from_dict(json.load(f))
        check_heads_match(directory, mtp_config)
        adapter_config = os.path.join(directory, "adapter_config.json")
        if os.path.isfile(adapter_config):
            # a LoRA run: the heads are built on a base without adapter modules (parallel/sequential copy its last
            # layer before their saved weights load), then the adapter is merged into the base or added in place
            with open(adapter_config) as f:
                base_path = json.load(f)["base_model_name_or_path"]
            if not base_path:  # a base built in memory has no name: the adapter cannot say where its base is
                raise ValueError(
                    f"{adapter_config}: base_model_name_or_path={base_path!r}; set it to the folder or "
                    "hub id of the base the adapter was trained on"
                )
            base = AutoModelForCausalLM.from_pretrained(base_path, **load_kwargs)
            with warnings.catch_warnings():
                # the adapter was trained with the heads attached and excluded from LoRA; here they are not
                # attached, so PEFT finds nothing to exclude and would say so
                warnings.filterwarnings("ignore", message=".*no modules were excluded.*")
                if merge_lora:
                    from peft import PeftModel

                    base = PeftModel.from_pretrained(base, directory).merge_and_unload()
                model = cls(base, mtp_config)
                if not merge_lora:
                    model.base_model.load_adapter(directory)
        else:
            model = cls(AutoModelForCausalLM.from_pretrained(directory, **load_kwargs), mtp_config)
        model.load_heads(directory)
        return model

    @classmethod
    def _from_native(cls, directory, **load_kwargs) -> MTPForCausalLM:
        """Sequential heads holding a checkpoint's native MTP layers (D = their number)."""
        base, mtp = load_native(directory, **load_kwargs)
        model = cls(base, MTPConfig(head_type="sequential", num_mtp_heads=len(mtp.layers)))
        copy_native_layers(model.heads, mtp)
        return model.to(base.device)

    # -- what a Trainer expects of a model -------------------------------------------------------------
    @property
    def config(self):
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    # activation checkpointing is the base's; heads follow its setting (see MTPHeads.iter_depth_hiddens)
    def speculative_generate(self, input_ids, attention_mask=None, **kwargs):
        """Self-speculative decoding with the heads; see `trl_mtp.decoding.speculative_generate`."""
        from trl_mtp.decoding import speculative_generate

        return speculative_generate(self, input_ids, attention_mask, **kwargs)

    def gradient_checkpointing_enable(self, *args, **kwargs):
        self.base_model.gradient_checkpointing_enable(*args, **kwargs)

    def gradient_checkpointing_disable(self):
        self.base_model.gradient_checkpointing_disable()

    def activation_checkpointing_enable(self, *args, **kwargs):
        self.base_model.activation_checkpointing_enable(*args, **kwargs)

    def activation_checkpointing_disable(self):
        self.base_model.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.trunk.is_checkpointing

    def get_input_embeddings(self):
        return self.base_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.base_model.get_output_embeddings()

    # -- forward and losses ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> MTPCausalLMOutput:
        """Base forward (extra kwargs such as `use_cache` go to it) and, with `labels`, main + MTP losses.

        The main loss is CE of the main logits on labels[t+1] with the same masks as the heads (padding and packed
        boundaries never crossed). With `num_items_in_batch` (Trainer), losses are sums divided by it."""
        if labels is not None:
            # a loss needs no KV cache; and transformers only detects packed sequences (position_ids resets) without one
            kwargs.setdefault("use_cache", False)
        out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        result = MTPCausalLMOutput(
            logits=out.logits,
            past_key_values=getattr(out, "past_key_values", None),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )
        if labels is None:
            return result
        mtp = self.compute_mtp_loss(
            input_ids, labels, attention_mask, position_ids, num_items_in_batch=num_items_in_batch
        )
        main_labels = shift_labels(labels, 0, attention_mask, position_ids)
        main_sum = F.cross_entropy(
            out.logits.float().flatten(0, 1), main_labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        normalizer = num_items_in_batch if num_items_in_batch is not None else (main_labels != IGNORE_INDEX).sum()
        result.main_loss = main_sum / normalizer.clamp(min=1) if torch.is_tensor(normalizer) else main_sum / normalizer
        result.mtp_loss = mtp.loss
        result.loss = result.main_loss + self.mtp_config.mtp_lambda * mtp.loss
        result.mtp_losses, result.mtp_accuracies = mtp.losses, mtp.accuracies
        result.mtp_entropies, result.mtp_num_tokens = mtp.entropies, mtp.num_tokens
        return result

    def compute_mtp_loss(
        self,
        input_ids: torch.LongTensor,
        labels: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        num_depths: int | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> MTPLossOutput:
        """MTP loss sum_i w_i CE_i (no lambda) from the states captured during the LAST trunk forward.

        Call it right after the grad-enabled forward of the same `input_ids` (any path: ours, TRL's fused head,
        the base's own). `labels` unshifted (-100 ignored). `num_depths` < D trains the first depths only."""
        hidden = self.trunk.hidden
        if hidden is None or hidden.shape[:2] != input_ids.shape:
            got = None if hidden is None else tuple(hidden.shape[:2])
            raise RuntimeError(f"captured trunk hidden {got} does not match input_ids {tuple(input_ids.shape)}")
        return mtp_loss(
            self.heads,
            hidden,
            input_ids,
            labels,
            self.mtp_config,
            attention_mask=attention_mask,
            position_ids=position_ids,
            num_depths=num_depths,
            num_items_in_batch=num_items_in_batch,
        )

    def mtp_logits(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """[D, B, T, V]: depth i (index i-1) at position t predicts token t+1+i. For inspection of small inputs."""
        self.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return torch.stack(
            [
                self.heads.depth_logits(depth, z)
                for depth, z in self.heads.iter_depth_hiddens(self.trunk.hidden, input_ids)
            ]
        )
