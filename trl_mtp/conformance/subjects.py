"""What the conformance paths run on: a `Subject` gives them a base model, heads, prompts and a tokenizer, from the
tiny models of real checkpoints' configs (`tiny_subject`) or from a user's checkpoint folder (`checkpoint_subject`,
what `trl-mtp check` reads)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trl_mtp.config import HEAD_TYPES, MTPConfig

D = 3  # drafts per round: long verify blocks, so rejected drafts leave holes of up to 3 slots
GREEDY_LENGTHS = [10, 16, 13]  # the greedy paths' prompts: 3 left-padded rows
FITTED_ROWS = [0, 2]  # tiny models' heads learn these rows' continuations: they keep drafts while row 1 rejects
FIT_STEPS, FIT_LR, FIT_NEW_TOKENS = 12, 2e-2, 20


class Refused(Exception):
    """The path does not apply to this model; the message says why, in one line."""


def text_config(model):
    return model.config.get_text_config()


def position_limit(model) -> int | None:
    return getattr(text_config(model), "max_position_embeddings", None)


def room(model, prompt_len: int, wanted: int) -> int:
    """New tokens to ask for: `wanted`, or fewer so that a full verify block (D drafts past the last token) stays
    inside the model's positions (the position_limit path goes to the very end on purpose)."""
    limit = position_limit(model)
    n = wanted if limit is None else min(wanted, limit - prompt_len - D - 1)
    if n < 1:
        raise Refused(f"prompt of {prompt_len} tokens: no room under the position limit {limit}")
    return n


@dataclass
class Subject:
    """What the paths run on. `new_base()` returns a fresh base model (eval mode, its generation config); `trained()`
    the checkpoint's own `MTPForCausalLM` when it has heads; `native_dir` a folder with native MTP layers that stock
    transformers can read; `tokenizer` what MTP-SFT tokenizes with (None: the sft path refuses)."""

    name: str
    config: object  # the base's config
    new_base: Callable
    tokenizer: object | None = None
    trained: Callable | None = None
    native_dir: str | None = None
    prompt_ids: list[list[int]] | None = None  # token rows to start from (default: random tokens)
    fit_heads: bool = False  # new heads learn the greedy prompts' continuations first (`fit_heads`)
    seed: int = 0
    _models: dict = field(default_factory=dict, repr=False)

    @property
    def families(self) -> tuple[str, ...]:
        return (self.mtp(None).heads.head_type,) if self.trained else HEAD_TYPES

    def mtp(self, family: str | None):
        """The model the decoding paths read (built once): the checkpoint's own heads, or new heads of `family`."""
        if self.trained:
            if "trained" not in self._models:
                self._models["trained"] = self.trained().eval()
            model = self._models["trained"]
            if family is not None and family != model.heads.head_type:
                raise Refused(f"the checkpoint's heads are {model.heads.head_type!r}, not {family!r}")
            return model
        if family not in self._models:
            model = new_heads(self.new_base(), family)
            if self.fit_heads:
                ids, mask = self.prompts(GREEDY_LENGTHS, model.device)
                fit_heads(model, ids[FITTED_ROWS], mask[FITTED_ROWS], room(model, ids.size(1), FIT_NEW_TOKENS))
            self._models[family] = model
        return self._models[family]

    def prompts(self, lengths: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts of the given lengths (cut from `prompt_ids` when the subject has some)."""
        from trl_mtp.decoding import left_pad

        text = self.config.get_text_config()
        generator = torch.Generator().manual_seed(self.seed)
        rows = []
        for i, n in enumerate(lengths):
            source = self.prompt_ids[i % len(self.prompt_ids)] if self.prompt_ids else None
            if source is not None and len(source) >= n:
                rows.append(list(source[:n]))
            else:
                rows.append(torch.randint(0, text.vocab_size, (n,), generator=generator).tolist())
        pad = text.pad_token_id if text.pad_token_id is not None else 0
        return left_pad(rows, pad, device=device)


def new_heads(base, family: str):
    """`MTPForCausalLM.from_base` with D heads of `family`, in eval mode."""
    from trl_mtp.model import MTPForCausalLM

    return MTPForCausalLM.from_base(base, MTPConfig(head_type=family, num_mtp_heads=D)).eval()


def fit_heads(model, ids, mask, max_new_tokens: int, steps: int = FIT_STEPS, lr: float = FIT_LR) -> float:
    """Train the heads alone (Adam, base frozen) on the base's own greedy continuation of these prompts, until they
    mostly know it by heart: a random model's continuations are too erratic for heads to draft them otherwise (fresh
    heads keep 0% of drafts), and decoding with 0% acceptance never commits a block nor leaves a hole. Returns the
    last MTP loss."""
    base = model.base_model
    with torch.no_grad():
        seq = base.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    seq_mask = torch.cat([mask, mask.new_ones(seq.size(0), seq.size(1) - mask.size(1))], dim=1)
    labels = seq.masked_fill(seq_mask == 0, -100)
    frozen = [p for p in base.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for p in model.heads.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for _ in range(steps):
                with torch.no_grad():
                    base(input_ids=seq, attention_mask=seq_mask, use_cache=False)
                loss = model.compute_mtp_loss(seq, labels, attention_mask=seq_mask).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.trunk.clear()
    return loss.item()


def tiny_subject(name: str, seed: int = 0) -> Subject:
    """A conformance model of checkpoint `name` (see `configs.CHECKPOINTS`); its heads learn their drafts first."""
    from trl_mtp.conformance.configs import CHECKPOINTS, tiny_model, tiny_tokenizer

    return Subject(
        name=name,
        config=CHECKPOINTS[name].build_config(),
        new_base=lambda: tiny_model(name, seed),
        tokenizer=tiny_tokenizer(name),
        fit_heads=True,
        seed=seed,
    )


def checkpoint_subject(directory, device="cpu", dtype=torch.float32, texts=None, seed: int = 0) -> Subject:
    """A user's checkpoint folder as a `Subject`: an MTP checkpoint (`mtp_config.json`, a LoRA run's adapter merged),
    a checkpoint with native MTP layers, or a plain base (new heads of each family). Prompts are `texts` through the
    folder's tokenizer, or random tokens when it has none."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from trl_mtp.model import CONFIG_FILE, MTPForCausalLM
    from trl_mtp.native import native_mtp_layers

    directory = str(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model {directory!r}: no such directory")
    lora = os.path.isfile(os.path.join(directory, "adapter_config.json"))
    has_heads = os.path.isfile(os.path.join(directory, CONFIG_FILE))
    native = not has_heads and native_mtp_layers(directory) > 0
    load = dict(dtype=dtype, **({} if torch.device(device).type == "cpu" else {"device_map": {"": device}}))

    def trained():
        return MTPForCausalLM.from_pretrained(directory, merge_lora=lora, **load).eval()

    def new_base():
        if lora:  # the base is elsewhere: the adapter's, merged
            model = trained()
            model.trunk.remove_hooks()
            return model.base_model
        return AutoModelForCausalLM.from_pretrained(directory, **load).eval()

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError):  # saved without its tokenizer: random prompts, no sft
        tokenizer = None
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompt_ids = [tokenizer(t)["input_ids"] for t in texts or DEFAULT_TEXTS] if tokenizer is not None else None
    source = directory
    if lora:  # a LoRA run's config is its base's
        with open(os.path.join(directory, "adapter_config.json")) as f:
            source = json.load(f).get("base_model_name_or_path") or directory
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(f"model {directory!r}: not a model folder ({str(err).strip().splitlines()[0]})") from None
    return Subject(
        name=os.path.basename(os.path.normpath(directory)),
        config=config,
        new_base=new_base,
        tokenizer=tokenizer,
        trained=trained if has_heads or native else None,
        native_dir=directory if native else None,
        prompt_ids=prompt_ids,
        seed=seed,
    )


# prompts for a user's checkpoint: ordinary text, long enough for the paths' longest prompt (16 tokens)
DEFAULT_TEXTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable "
    "type with an oil-based ink and a wooden press adapted from those used to make wine.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Photosynthesis converts light energy into chemical energy: plants take in carbon dioxide and water and, using "
    "sunlight, produce glucose and release oxygen into the air around them.",
]
