"""Where built artefacts (tokenizer, pretrained bases) are cached: env TRL_MTP_CACHE or ~/.cache/trl_mtp."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root, read from the environment at each call so tests can point it at a tmp dir."""
    return Path(os.environ.get("TRL_MTP_CACHE") or Path.home() / ".cache" / "trl_mtp")


def stable_hash(obj) -> str:
    """A short hash of a JSON-serialisable object, stable across processes and runs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
