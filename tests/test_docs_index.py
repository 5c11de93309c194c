"""The docs index (docs/README.md) lists every page of docs/, each of its links reaches a file and, for a
`#section` link, a heading of that file; the README links to the index."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def index_problems(docs: Path) -> list[str]:
    index = docs / "README.md"
    text = index.read_text()
    problems, linked = [], set()
    for target, section in LINK.findall(text):
        path = (docs / target).resolve()
        linked.add(path)
        if not path.exists():
            problems.append(f"link to a missing file: {target}")
        elif section and section not in {anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}:
            problems.append(f"link to a missing section: {target}#{section}")
    pages = {p.resolve() for p in docs.rglob("*.md") if p != index and "results" not in p.relative_to(docs).parts}
    problems += [f"not in the index: {p.relative_to(docs.resolve())}" for p in sorted(pages - linked)]
    return problems


def test_the_index_lists_every_page_and_its_links_resolve():
    assert not index_problems(REPO / "docs")
    assert "](docs/README.md)" in (REPO / "README.md").read_text()


def test_the_check_finds_a_page_left_out_and_a_broken_link(tmp_path):
    docs = tmp_path / "docs"
    (docs / "trainers").mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\n## 5. World-model PPO\n")
    (docs / "trainers" / "sft.md").write_text("# SFT\n")
    (docs / "README.md").write_text("- [guide](guide.md#5-world-model-ppo)\n- [sft](trainers/sft.md)\n")
    assert index_problems(docs) == []
    (docs / "new.md").write_text("# A page nobody linked\n")
    (docs / "README.md").write_text("- [guide](guide.md#6-gone)\n- [sft](trainers/sft.md)\n- [x](missing.md)\n")
    assert index_problems(docs) == [
        "link to a missing section: guide.md#6-gone",
        "link to a missing file: missing.md",
        "not in the index: new.md",
    ]
