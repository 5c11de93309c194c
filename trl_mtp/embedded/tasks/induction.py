"""Stories with random two-token names: the induction test of Gloeckle et al. 2024 at toy scale.

Word level, one token per word. A story is a few template sentences about `characters` characters; each name is
two tokens, a first part and a second part drawn independently, so a name's second part is unpredictable at its
first mention and predictable at every later one only by recalling the earlier mention (induction: find the
earlier first part, copy what followed it). Gloeckle et al. score the second token of names at their later
mentions; `story` returns those positions. Not a prompt task (no answer): its own vocabulary, for models trained
from scratch on it, so it stays out of the task registry and the pretraining mixture.
"""

from __future__ import annotations

import random

from trl_mtp.embedded.tasks.base import Task, check_count

# {0}, {1}, {2}: the characters (a name each time); every sentence ends with "."
SENTENCES = (
    "once upon a time there was a child named {0} .",
    "{0} lived in a small house near the park .",
    "{0} had a friend named {1} .",
    "one day {0} and {1} went to the park .",
    "{1} found a red ball under a big tree .",
    "{0} asked {1} to share the ball .",
    "{1} said yes and gave the ball to {0} .",
    "{0} was happy and thanked {1} .",
    "then {2} came to play with {0} and {1} .",
    "{2} liked to run fast in the sun .",
    "{1} and {2} ran to the tree .",
    "at night {0} went home to sleep .",
    "{2} told {0} a funny story .",
    "the next day {1} met {2} again .",
)
EOS = "<eos>"


def _words() -> list[str]:
    return sorted({w for s in SENTENCES for w in s.split() if not w.startswith("{")})


class NamedStories(Task):
    name = "named_stories"
    description = "template stories whose characters have random two-token names (induction)"
    params = {"first_parts": 40, "second_parts": 40, "characters": 3, "sentences": 6}
    min_values = {"first_parts": 1, "second_parts": 2, "characters": 1, "sentences": 2}

    def validate(self) -> None:
        if self.characters > 3:
            raise ValueError(f"task 'named_stories': characters={self.characters}: the templates have 3 slots")
        if self.characters > self.first_parts:
            raise ValueError(
                f"task 'named_stories': characters={self.characters} is more than the "
                f"{self.first_parts} first parts (each character's first part is its own)"
            )

    @property
    def vocab(self) -> list[str]:
        """Template words, then first parts `A0..`, second parts `B0..`, then the end token."""
        return (
            _words() + [f"A{i}" for i in range(self.first_parts)] + [f"B{i}" for i in range(self.second_parts)] + [EOS]
        )

    def token_vocab_size(self) -> int:
        return len(self.vocab)

    def story(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """(token ids ending with the end token, positions of the second part of names mentioned before)."""
        index = {w: i for i, w in enumerate(self.vocab)}
        # distinct first parts, so that a first part names one character; second parts drawn independently
        firsts = rng.sample(range(self.first_parts), self.characters)
        names = [(f"A{f}", f"B{rng.randrange(self.second_parts)}") for f in firsts]
        usable = [s for s in SENTENCES if all(f"{{{i}}}" not in s for i in range(self.characters, 3))]
        opening = [s for s in usable if "{0}" in s]  # the story starts with its first character
        chosen = [rng.choice(opening)] + [rng.choice(usable) for _ in range(self.sentences - 1)]
        ids, later, seen = [], [], set()
        for sentence in chosen:
            for word in sentence.split():
                if word.startswith("{"):
                    first, second = names[int(word[1])]
                    ids.append(index[first])
                    if (first, second) in seen:
                        later.append(len(ids))
                    ids.append(index[second])
                    seen.add((first, second))
                else:
                    ids.append(index[word])
        return ids + [index[EOS]], later

    def stories(self, split: str, n: int) -> list[tuple[list[int], list[int]]]:
        """`n` stories of `split` ('train' or 'eval': separate random streams), deterministic in (seed, params)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        check_count(n)
        rng = random.Random(f"{self.name}|{self.seed}|{split}|{sorted(self.config.items())}")
        return [self.story(rng) for _ in range(n)]
