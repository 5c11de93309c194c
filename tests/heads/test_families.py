"""One list of head families (`config.HEAD_TYPES`): the head classes, the decoding drafters and the train-step
benchmark's targets cover exactly its families, so a family added in one place and not the others fails here."""

from trl_mtp.benchmarks.train_step import TARGET_TIME
from trl_mtp.config import HEAD_TYPES
from trl_mtp.decoding import DRAFTERS
from trl_mtp.heads import HEAD_FAMILIES, MTPHeads


def registry_mismatches(head_types, head_families, drafters, time_targets) -> list[str]:
    """What disagrees with `head_types`: head classes (same names, same order, each class naming itself so),
    drafters and benchmark targets (same names)."""
    found = []
    if tuple(head_families) != tuple(head_types):
        found.append(f"head classes {tuple(head_families)} != {tuple(head_types)}")
    found += [
        f"{name} -> {cls.__name__} (head_type {cls.head_type!r})"
        for name, cls in head_families.items()
        if cls.head_type != name or not issubclass(cls, MTPHeads)
    ]
    for what, names in (("drafters", drafters), ("train-step targets", time_targets)):
        if set(names) != set(head_types):
            found.append(f"{what} {sorted(names)} != {sorted(head_types)}")
    return found


def test_head_classes_drafters_and_benchmarks_follow_the_one_list():
    assert len(HEAD_TYPES) == len(set(HEAD_TYPES)) == 4
    assert registry_mismatches(HEAD_TYPES, HEAD_FAMILIES, DRAFTERS, TARGET_TIME) == []


def test_the_check_catches_a_family_missing_or_misnamed_anywhere():
    added = (*HEAD_TYPES, "eagle")  # a family added to the list only
    assert len(registry_mismatches(added, HEAD_FAMILIES, DRAFTERS, TARGET_TIME)) == 3
    no_medusa_drafter = {name: d for name, d in DRAFTERS.items() if name != "medusa"}
    assert registry_mismatches(HEAD_TYPES, HEAD_FAMILIES, no_medusa_drafter, TARGET_TIME) == [
        f"drafters ['blockwise', 'parallel', 'sequential'] != {sorted(HEAD_TYPES)}"
    ]
    swapped = {**HEAD_FAMILIES, "parallel": HEAD_FAMILIES["sequential"]}  # the registry pointing at the wrong class
    assert registry_mismatches(HEAD_TYPES, swapped, DRAFTERS, TARGET_TIME) == [
        "parallel -> SequentialHeads (head_type 'sequential')"
    ]
