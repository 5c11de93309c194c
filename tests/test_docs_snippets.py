"""Every ```python block of README.md and the docs runs, as a reader would paste it, with a tiny local model in
place of the hub ids and a couple of steps in place of a real run (the substitution table below). A block that
cannot run is marked `<!-- not runnable: reason -->` on the line before its fence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(
    r"(?P<marker><!-- not runnable: (?P<reason>.+?) -->\s*\n)?(?P<indent>[ ]*)```python\n"
    r"(?P<code>.*?)\n(?P=indent)```",
    re.S,
)

# placeholder in the docs -> what the test runs instead ({base}, {mtp}: tiny local folders made by the fixture)
SUBSTITUTIONS = {
    '"path/or/hub-id"': '"{base}"',
    '"path/to/sft-model"': '"{mtp}"',
    '"path/to/mtp-run"': '"{mtp}"',
    'str(pretrain_base("tiny-llama", "mix"))': '"{base}"',
    "max_steps=300": "max_steps=2",
    "max_steps=100": "max_steps=1",
    "max_new_tokens=64": "max_new_tokens=4",
    "train(2000)": "train(16)",
    "train(1000)": "train(16)",
}


def snippets() -> list:
    found = []
    for doc in DOCS:
        for match in FENCE.finditer(doc.read_text()):
            indent = len(match["indent"])
            code = "\n".join(line[indent:] for line in match["code"].splitlines())
            line = doc.read_text()[: match.start("code")].count("\n") + 1
            found.append(pytest.param(code, match["reason"], id=f"{doc.relative_to(REPO)}:{line}"))
    return found


SNIPPETS = snippets()


def substituted(code: str, folders: dict) -> str:
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new.format(**folders))
    return code


@pytest.fixture(scope="module")
def folders(model_folders) -> dict:
    return {name: str(path) for name, path in model_folders.items()}


def test_snippets_are_found_and_the_table_is_used():
    assert len(SNIPPETS) >= 6
    runnable = "\n".join(p.values[0] for p in SNIPPETS if p.values[1] is None)
    stale = [old for old in SUBSTITUTIONS if old not in runnable]
    assert not stale, f"substitutions no snippet uses any more: {stale}"


@pytest.mark.slow
@pytest.mark.parametrize("code, not_runnable", SNIPPETS)
def test_snippet_runs(code, not_runnable, folders, tmp_path, monkeypatch):
    if not_runnable:
        pytest.skip(f"marked not runnable: {not_runnable}")
    monkeypatch.chdir(tmp_path)  # the snippets write relative output folders ("out")
    exec(compile(substituted(code, folders), "<snippet>", "exec"), {"__name__": "__snippet__"})


@pytest.mark.slow
def test_the_readme_snippet_fails_without_save_model(folders, tmp_path, monkeypatch):
    """The README's promise (from_pretrained("out") after training) needs its save_model(): train() alone writes
    checkpoints only, which is the failure a reader met before the snippet saved."""
    readme = next(p.values[0] for p in SNIPPETS if p.id.startswith("README.md"))
    assert "trainer.save_model()" in readme
    monkeypatch.chdir(tmp_path)
    broken = substituted(readme.replace("trainer.save_model()", "pass"), folders)
    with pytest.raises(FileNotFoundError, match="not an MTP checkpoint"):
        exec(compile(broken, "<snippet>", "exec"), {"__name__": "__snippet__"})
