"""Named stories: every name is two tokens, and the positions scored for induction are exactly the second parts
of names mentioned before."""

import random

import pytest

from trl_mtp.embedded.tasks.induction import NamedStories


def _mentions(task, ids):
    """(position of the second part, name) for every name mention, by hand from the words."""
    words = [task.vocab[i] for i in ids]
    return [(p, (words[p - 1], words[p])) for p in range(1, len(words)) if words[p - 1].startswith("A")]


def test_later_mentions_are_exactly_the_repeats():
    task = NamedStories(characters=3, sentences=8)
    for ids, later in task.stories("train", 50):
        mentions = _mentions(task, ids)
        assert all(word.startswith("B") for (_, (_, word)) in mentions)  # a first part is always followed by one
        seen, expected = set(), []
        for pos, name in mentions:
            if name in seen:
                expected.append(pos)
            seen.add(name)
        assert later == expected
        firsts = {}
        for _, (first, second) in mentions:  # one first part, one character
            assert firsts.setdefault(first, second) == second
        assert task.vocab[ids[-1]] == "<eos>"


def test_stories_deterministic_and_split():
    a, b = NamedStories(seed=3), NamedStories(seed=3)
    assert a.stories("train", 5) == b.stories("train", 5)
    assert a.stories("train", 5) != a.stories("eval", 5)
    assert a.stories("train", 5) != NamedStories(seed=4).stories("train", 5)


def test_fewer_characters_use_fewer_slots():
    task = NamedStories(characters=1, sentences=5)
    ids, later = task.story(random.Random(0))
    assert len({name for _, name in _mentions(task, ids)}) == 1 and len(later) >= 4


def test_bad_parameters():
    with pytest.raises(ValueError, match="characters=4"):
        NamedStories(characters=4)
    with pytest.raises(ValueError, match="first parts"):
        NamedStories(first_parts=2, characters=3)
    with pytest.raises(ValueError, match="split must be"):
        NamedStories().stories("test", 1)
