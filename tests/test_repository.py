"""The repository as a reader gets it: self-contained documentation whose links resolve, a README
that links every reference page, and generated figures kept lean."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = {".venv", ".git", ".pytest_cache", "data", "build", "dist"}
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCED_CODE = re.compile(r"```.*?```", re.S)


def shipped(pattern: str) -> list[Path]:
    """The repository's files matching `pattern`, without environments, results and build output."""
    return sorted(path for path in ROOT.rglob(pattern)
                  if not NOT_SHIPPED & set(path.relative_to(ROOT).parts) and not path.parts[-2].endswith(".egg-info"))


def heading_anchors(markdown: str) -> set[str]:
    """The #anchors GitHub gives the headings of a markdown page (lower case, punctuation dropped,
    spaces to dashes, -1, -2, … for repeats); headings inside fenced code do not count."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCED_CODE.sub("", markdown).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1).replace("`", "")).strip().lower()
        slug = "".join(c for c in text if c.isalnum() or c in "-_ " or unicodedata.category(c).startswith("L"))
        slug = slug.replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_relative_link_of_the_markdown_pages_resolves():
    broken = []
    for page in shipped("*.md"):
        for target in MARKDOWN_LINK.findall(FENCED_CODE.sub("", page.read_text())):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_short_and_links_every_reference_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs and [doc.name for doc in docs if f"(docs/{doc.name}" not in readme] == []


def test_documentation_cites_nothing_a_clone_lacks():
    """No pointer to a design document or tracker outside the repository."""
    outside = re.compile(r"S[P]EC|\.\.[/]shared|issue [0-9]")  # written so that it does not match itself
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for pattern in ("*.py", "*.md", "*.yaml")
             for path in shipped(pattern)
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if outside.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("folder", ["paper/figures", "paper/reduced"])
def test_generated_figures_stay_lean(folder):
    """PNGs for the screen (the PDFs carry full quality) and a figures folder a clone can afford."""
    files = [path for path in (ROOT / folder).rglob("*") if path.is_file()]
    large = [f"{path.name}: {path.stat().st_size // 1024} KB" for path in files
             if path.suffix == ".png" and path.stat().st_size > 300 * 1024]
    assert not large, "\n".join(large)
    assert sum(path.stat().st_size for path in files) <= 10 * 1024 ** 2
