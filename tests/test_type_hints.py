"""The seams are typed: `model` and `args` of the public trainer, model and search entry points carry type hints
that resolve (a stale name in a string annotation fails `get_type_hints`). Decoding's are checked with decoding."""

from __future__ import annotations

import inspect
import typing

import pytest

import trl_mtp
from trl_mtp.embedded.evaluate import evaluate_task, heldout_nll
from trl_mtp.lookahead import best_of_n, lookahead_search
from trl_mtp.trainers.mtp_mixin import load_mtp_model

TRAINERS = [getattr(trl_mtp, name) for name in trl_mtp.__all__ if name.endswith("Trainer")]
ENTRY_POINTS = [
    *(trainer.__init__ for trainer in TRAINERS),
    trl_mtp.MTPForCausalLM.from_base,
    trl_mtp.MTPForCausalLM.from_pretrained,
    load_mtp_model,
    lookahead_search,
    best_of_n,
    evaluate_task,
    heldout_nll,
]
SEAMS = ("model", "model_or_path", "directory", "args")


def untyped_seams(fn) -> list[str]:
    hints = typing.get_type_hints(fn)
    names = [name for name in inspect.signature(fn).parameters if name in SEAMS]
    assert names, f"{fn.__qualname__} has no seam parameter"
    return [name for name in names if name not in hints]


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda fn: fn.__qualname__)
def test_seams_are_typed(fn):
    assert not untyped_seams(fn)


def test_the_check_finds_an_untyped_seam():
    assert len(set(TRAINERS)) == 6  # every trainer (PPOTrainer is MTPPPOTrainer)

    def search(model, args: dict, steps: int):
        return model, args, steps

    assert untyped_seams(search) == ["model"]
