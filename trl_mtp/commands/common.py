"""Helpers shared by the subcommands: an argument parser whose errors are one line, argument types that name the
bad value, and model loading."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from trl_mtp.errors import UserInputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UserInputError, which the dispatcher prints as one line (exit 2)."""

    def error(self, message: str):
        raise UserInputError(message)


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0, or an error naming the value."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, or an error naming the value."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0, or an error naming the value."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in (0, 1] (a nucleus, top-p), or an error naming the value."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def model_folder(path: str) -> str:
    """The local model folder a command reads (`generate`, `probe`, `export`): it exists, is a folder, and its JSON
    files parse (`trl_mtp.model.check_model_dir`); otherwise UserInputError naming the path."""
    from trl_mtp.model import check_model_dir

    if not os.path.exists(path):
        raise UserInputError(f"model folder {path!r} does not exist")
    check_model_dir(path)
    return path


def load_model_and_tokenizer(name_or_path: str):
    """A causal LM and its tokenizer from a local directory or a hub id.

    A local-looking path that does not exist raises FileNotFoundError naming it; anything that fails to load
    raises ValueError naming it (both end as one line from the CLI).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mtp.model import check_model_dir

    local = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep == "\\"
    if not local.exists() and looks_local:
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist")
    check_model_dir(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path)
        model = AutoModelForCausalLM.from_pretrained(str(local) if local.exists() else name_or_path)
    except OSError as err:
        raise ValueError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:  # batched generation needs a pad token; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
