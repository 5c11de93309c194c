"""Tiny models and prompts for the decoding tests (`tests/test_decoding*.py`), and the check they all make: the
output of `speculative_generate` against `generate`'s under the same settings."""

from __future__ import annotations

import random
import re

import torch

from trl_mtp.adaptive_drafting import DraftPlanner
from trl_mtp.config import HEAD_TYPES, MTPConfig
from trl_mtp.decoding import speculative_generate
from trl_mtp.embedded.presets import build_model
from trl_mtp.model import MTPForCausalLM

FAMILIES = HEAD_TYPES  # every head family, from the one list
VOCAB, PAD = 96, 0


def wrap(
    base, family: str, depths: int = 3, seed: int = 0, perturb: float = 0.0, perturb_from: int = 1
) -> MTPForCausalLM:
    """`base` (float64) with fresh heads of `family`; with `perturb`, noise on the heads of depth > perturb_from
    (module-list index; by default depth 1 stays good): rejections at varying depths."""
    model = MTPForCausalLM(base.double(), MTPConfig(head_type=family, num_mtp_heads=depths)).double().eval()
    if perturb:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in model.heads.named_parameters():
                index = re.search(r"\.(\d+)\.", f".{name}")
                if index and int(index.group(1)) >= perturb_from:
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * perturb)
    return model


def make_model(
    family: str,
    preset: str = "tiny-llama",
    depths: int = 3,
    seed: int = 0,
    vocab: int = VOCAB,
    perturb: float = 0.0,
    perturb_from: int = 1,
    **overrides,
) -> MTPForCausalLM:
    small = dict(n_layer=2) if "gpt2" in preset else dict(num_hidden_layers=2)
    base = build_model(preset, vocab, seed=seed, **{**small, **overrides})
    return wrap(base, family, depths, seed, perturb, perturb_from)


def random_batch(seed: int, batch: int, max_len: int = 14, vocab: int = VOCAB, min_len: int = 3):
    """Left-padded random prompts of different lengths (token ids avoid PAD); row 0 is the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    ids = torch.randint(1, vocab, (batch, max_len), generator=g)
    mask = (torch.arange(max_len)[None] >= (max_len - lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def reference(model, ids, mask, max_new_tokens, eos=None, **settings):
    """Greedy `generate`; eos None: no EOS (not the config's)."""
    return model.base_model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=[] if eos is None else eos,
        pad_token_id=PAD,
        **settings,
    )


def check_identity(model, ids, mask, max_new_tokens, eos=None, adaptive_draft_tokens=False, **settings):
    """Greedy speculative output == `generate`'s, row by row (eos None: no EOS); -> the speculative stats."""
    eos = [] if eos is None else eos
    ref = reference(model, ids, mask, max_new_tokens, eos, **settings)
    out, stats = speculative_generate(
        model,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=PAD,
        do_sample=False,
        adaptive_draft_tokens=adaptive_draft_tokens,
        **settings,
    )
    T = ids.size(1)
    assert torch.equal(out, ref), f"\nspeculative {out[:, T:].tolist()}\ngenerate    {ref[:, T:].tolist()}"
    return stats


class RandomPlanner(DraftPlanner):
    """Drafts a random number of tokens (0..the room left) each round, seeded: the hardest case for losslessness,
    every round's choice different and depending on nothing the model computes."""

    def __init__(self, max_drafts: int, seed: int = 0):
        super().__init__(max_drafts)
        self.rng = random.Random(seed)

    def choose(self, batch_size: int, limit: int | None = None) -> int:
        return self.rng.randint(0, self.max_drafts if limit is None else min(limit, self.max_drafts))


class ScriptedPlanner(DraftPlanner):
    """Drafts the numbers in `script` round after round (cycling; capped at the room left): runs of plain rounds
    between drafting ones, the pattern an adaptive planner produces where speculation barely pays."""

    def __init__(self, max_drafts: int, script: list[int]):
        super().__init__(max_drafts)
        self.script, self.choices = script, []

    def choose(self, batch_size: int, limit: int | None = None) -> int:
        k = self.script[len(self.choices) % len(self.script)]
        self.choices.append(k if limit is None else min(k, limit))
        return self.choices[-1]
