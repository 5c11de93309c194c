"""A byte-level BPE tokenizer built offline from the standard library's source, saved in the HF format.

Digits are split one per token so that arithmetic is learnable. Special tokens: `<|bos|>`, `<|eos|>`, `<|pad|>`
and the chat role markers `<|system|>`, `<|user|>`, `<|assistant|>`. The EOS token also ends every chat turn,
so one stop token serves plain completions and chat alike (no extra EOS id to pass to `generate`).
The same Python and arguments give byte-identical files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from trl_mtp.embedded.cache import cache_root, stable_hash
from trl_mtp.embedded.tasks.stdlib import read_source, stdlib_files

RECIPE_VERSION = 1  # bump when the recipe below changes, so cached tokenizers are rebuilt
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
# Characters the task formats use, so they are in the training text whatever the corpus holds.
TASK_TEXT = "graph:12>5,5>33|12>33= sort:7,31,58= copy:7,31,58= 123+456= 12*34= 0123456789\n"

# Trimmed blocks eat a literal newline after a tag: emit newlines as {{ '\n' }}. `{% generation %}` marks the
# assistant tokens for TRL's assistant_only_loss. The EOS closes each turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}{{ '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] }}{{ eos_token }}"
    "{%- endif -%}"
    "{{ '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{{ '\n' }}{%- endif -%}"
)


def training_text(max_chars: int) -> list[str]:
    """The tokenizer's training text: train-split stdlib files in sorted order up to `max_chars`, plus task text."""
    from trl_mtp.embedded.tasks.base import split_of

    texts, total = [TASK_TEXT * 50], 0
    for rel, path in stdlib_files():
        if split_of(rel) != "train":
            continue
        text = read_source(path)[: max_chars - total]
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts


def build_tokenizer(out_dir: str | Path, vocab_size: int = 2048, max_chars: int = 2_000_000) -> Path:
    """Train the BPE on the stdlib text and save it with `save_pretrained` into `out_dir`."""
    if vocab_size < 256 + 16:
        raise ValueError(f"vocab_size must be at least 272 (bytes + special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLES],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(max_chars), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLES),
        model_max_length=1024,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(out_dir))
    return Path(out_dir)


def tokenizer_dir(vocab_size: int = 2048, cache_dir: str | Path | None = None) -> Path:
    """Where the tokenizer for this Python and recipe lives in the cache."""
    import sys

    key = stable_hash({"recipe": RECIPE_VERSION, "python": sys.version, "vocab_size": vocab_size})
    return Path(cache_dir or cache_root()) / f"tokenizer-{vocab_size}-{key}"


def get_tokenizer(cache_dir: str | Path | None = None, vocab_size: int = 2048):
    """The embedded tokenizer, built once into the cache (a few seconds) and loaded from there afterwards."""
    target = tokenizer_dir(vocab_size, cache_dir)
    if not (target / "tokenizer.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=target.parent))
        build_tokenizer(tmp, vocab_size)
        try:
            os.rename(tmp, target)  # atomic: a concurrent build that lost the race leaves the winner's files
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(target))
