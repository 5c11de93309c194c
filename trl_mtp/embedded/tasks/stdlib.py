"""Language-modelling corpus: the running Python's own standard-library source, the real text every machine has.

Files are listed in a fixed sorted order (test suites left out); a file belongs to the held-out split iff the
hash of its relative path falls in the eval bucket, so the split is stable across runs and machines.
Examples are `{"text": chunk}` with chunks of about `chunk_chars` characters cut at line ends.
"""

from __future__ import annotations

import random
import sysconfig
from functools import lru_cache
from pathlib import Path

from trl_mtp.embedded.tasks.base import Task, check_count, split_of

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[tuple[str, Path], ...]:
    """(relative path, path) of every standard-library `.py` file outside test suites, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")]
    return tuple(sorted((rel, p) for rel, p in files if not _SKIP_DIRS & set(rel.split("/"))))


def read_source(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class Stdlib(Task):
    name = "stdlib"
    description = "Python standard-library source as text chunks (language modelling, held-out split by file)"
    params = {"chunk_chars": 2000}
    min_values = {"chunk_chars": 1}

    def files(self, split: str) -> list[tuple[str, Path]]:
        """The files of `split`, in an order shuffled by the seed."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        files = [f for f in stdlib_files() if split_of(f[0]) == split]
        random.Random(f"stdlib|{self.seed}").shuffle(files)
        return files

    def texts(self, split: str):
        """Every chunk of `split`, lazily, in a fixed order."""
        for _, path in self.files(split):
            chunk = []
            size = 0
            for line in read_source(path).splitlines(keepends=True):
                chunk.append(line)
                size += len(line)
                if size >= self.chunk_chars:
                    yield "".join(chunk)
                    chunk, size = [], 0
            if chunk and "".join(chunk).strip():
                yield "".join(chunk)

    def dataset(self, split: str, n: int):
        """The first `n` chunks of `split` as a `datasets.Dataset` with a `text` column (fewer if it runs out)."""
        from datasets import Dataset

        check_count(n)
        texts = []
        for text in self.texts(split):
            if len(texts) >= n:
                break
            texts.append(text)
        return Dataset.from_dict({"text": texts})

    def train(self, n: int):
        return self.dataset("train", n)

    def eval(self, n: int):
        return self.dataset("eval", n)
