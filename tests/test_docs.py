"""The documents link to each other and to files of the repository: every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # not inside code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document):
    missing = [t for t in _relative_links(document) if not (document.parent / t.split("#")[0]).exists()]
    assert not missing, f"{document.relative_to(ROOT)} links to missing files: {missing}"


def test_every_guide_is_reachable_from_the_readme():
    """A guide nobody links to is a guide nobody reads: README -> docs/ (directly or via a guide)."""
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        doc = todo.pop()
        for target in _relative_links(doc):
            path = (doc.parent / target.split("#")[0]).resolve()
            if path.suffix == ".md" and path not in seen and path.exists():
                seen.add(path)
                todo.append(path)
    unreachable = [p.name for p in DOCUMENTS[2:] if p.resolve() not in seen]
    assert not unreachable, f"guides no document links to: {unreachable}"
