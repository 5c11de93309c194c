"""`tests/` mirrors the package: every subpackage of `trl_mtp` has a test folder at the same path under `tests/`
(the tests of `trl_mtp/x/y.py` live in `tests/x/test_y.py`; those of a root module `trl_mtp/y.py` in `tests/test_y.py`),
every test folder names a real subpackage, and no two test modules share a basename: the test folders have no
`__init__.py`, so pytest imports each module by its basename and a second one fails the collection."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import trl_mtp

PACKAGE_DIR = Path(trl_mtp.__file__).parent
TESTS_DIR = Path(__file__).parent

# Test folders that mirror no subpackage, each with why (fixtures or data a test reads, say). None today.
NOT_MIRRORED: dict[str, str] = {}


def _folders(root: Path, counts) -> set[str]:
    """The folders under `root` (relative, '/'-separated) that `counts` keeps; caches and hidden folders are not
    part of the layout."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_dir()
        and not any(part.startswith((".", "__pycache__")) for part in path.relative_to(root).parts)
        and counts(path)
    }


def subpackages(package_dir: Path) -> set[str]:
    return _folders(package_dir, lambda path: (path / "__init__.py").is_file())


def folders_of_tests(tests_dir: Path) -> set[str]:
    """Folders holding a file of their own at any depth (a folder left with only `__pycache__` by a move is gone)."""
    return _folders(tests_dir, lambda path: any(f.is_file() and "__pycache__" not in f.parts for f in path.rglob("*")))


def layout_problems(package_dir: Path, tests_dir: Path, not_mirrored: dict[str, str]) -> list[str]:
    packages, folders = subpackages(package_dir), folders_of_tests(tests_dir)
    problems = [f"{package_dir.name}/{p}/ has no tests/{p}/" for p in sorted(packages - folders)]
    problems += [
        f"tests/{f}/ names no subpackage of {package_dir.name} (move its tests, or add it to NOT_MIRRORED with why)"
        for f in sorted(folders - packages - set(not_mirrored))
    ]
    modules = defaultdict(list)
    for path in tests_dir.rglob("test_*.py"):
        modules[path.name].append(path.relative_to(tests_dir).as_posix())
    problems += [
        f"test modules share the name {name}: {sorted(paths)}" for name, paths in modules.items() if len(paths) > 1
    ]
    return problems


def test_tests_mirror_the_package():
    assert subpackages(PACKAGE_DIR) >= {"commands", "embedded", "embedded/tasks", "heads", "trainers"}
    assert not layout_problems(PACKAGE_DIR, TESTS_DIR, NOT_MIRRORED)


def test_not_mirrored_folders_exist_and_say_why():
    for folder, why in NOT_MIRRORED.items():
        assert (TESTS_DIR / folder).is_dir() and why.strip(), folder


def make_tree(root: Path, files: list[str]) -> None:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")


def test_the_check_finds_a_stray_folder_a_missing_one_and_a_clash(tmp_path):
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    make_tree(package, ["__init__.py", "a/__init__.py", "a/b/__init__.py", "a/b/m.py", "data/x.json"])
    make_tree(tests, ["conftest.py", "test_root.py", "a/test_m.py", "a/b/test_n.py", "a/b/__pycache__/x.pyc"])
    make_tree(tests, ["old/__pycache__/test_gone.pyc"])  # what a move leaves behind: not a folder of the layout
    assert layout_problems(package, tests, {}) == []

    make_tree(tests, ["tasks/test_stray.py"])  # a folder that mirrors nothing
    assert layout_problems(package, tests, {}) == ["tests/tasks/ names no subpackage of pkg " + NOT_MIRRORED_HINT]
    assert layout_problems(package, tests, {"tasks": "fixtures the tests read"}) == []

    make_tree(package, ["c/__init__.py"])  # a subpackage without its test folder
    make_tree(tests, ["a/b/test_m.py"])  # a second test_m.py: pytest would refuse to collect it
    assert layout_problems(package, tests, {"tasks": "fixtures"}) == [
        "pkg/c/ has no tests/c/",
        "test modules share the name test_m.py: ['a/b/test_m.py', 'a/test_m.py']",
    ]


NOT_MIRRORED_HINT = "(move its tests, or add it to NOT_MIRRORED with why)"
