"""The project explains itself: its README, docs, code and tests cite only
files that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "epochmagic").rglob("*.py")),
    *sorted((ROOT / "tests").glob("*.py")),
    *sorted((ROOT / "benchmarks").rglob("*.py")),
]


def test_markdown_links_point_at_files_in_the_repository():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to a missing {target}"


def test_nothing_cites_a_file_outside_the_repository():
    for path in TEXTS:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text, f"{path.relative_to(ROOT)} cites a file outside"
        for cited in re.findall(
            r"(?<![\w/.])((?:docs|benchmarks|tests|epochmagic)/[\w/.-]+\.(?:md|py|sh|png|json))",
            text,
        ):
            assert (ROOT / cited).exists(), f"{path.relative_to(ROOT)} cites a missing {cited}"
        if path.parent.name != "docs":  # docs/ links its siblings by bare name
            # the design is docs/design.md; a bare "design.md" would be another file
            bare = re.findall(r"(?<!docs/)(?<![\w-])design\.md", text)
            assert not bare, f"{path.relative_to(ROOT)} cites design.md outside docs/"
