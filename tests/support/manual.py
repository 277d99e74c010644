"""The manual (README.md and docs/*.md) as data, for the tests that keep it true
(tests/test_docs.py): fenced blocks, headings and their GitHub anchors, relative links, and the
table of contents of each page.

``python -m tests.support.manual`` rewrites the table of contents of every docs/ page (between
``<!-- toc -->`` and ``<!-- /toc -->``) from its headings; the tests fail when one is stale.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
TOC_START, TOC_END = "<!-- toc -->", "<!-- /toc -->"


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page (``` only; the manual uses no ~~~)."""
    out, lang, start, buf = [], None, 0, []
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, buf = line[3:].strip(), n, []
            else:
                out.append(Block(page, start, lang, "".join(buf)))
                lang = None
        elif lang is not None:
            buf.append(line + "\n")
    return out


def prose(text: str) -> str:
    """The text outside fenced blocks (links and headings live there)."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than '-' and '_' dropped, spaces
    become '-' (markdown emphasis and code marks are punctuation too)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    return [(len(m.group(1)), m.group(2).strip()) for m in re.finditer(r"^(#{1,6}) (.+)$", prose(text), re.M)]


def anchors(text: str) -> set[str]:
    """Every anchor of a page, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in headings(text):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out | {"top"}


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def links(page: Path) -> list[str]:
    """Link and image targets of a page's prose."""
    text = re.sub(r"`[^`\n]*`", "", prose(page.read_text(encoding="utf-8")))  # code spans hold no links
    return [a or b for a, b in LINK.findall(text)]


def toc(text: str) -> str:
    """The table of contents of a page: its ## and ### headings, nested."""
    lines = []
    for level, title in headings(text):
        if level in (2, 3):
            label = title.replace("[", "").replace("]", "")
            lines.append(f"{'  ' * (level - 2)}- [{label}](#{slug(title)})")
    return "\n".join(lines)


def with_toc(text: str) -> str:
    """The page with its table of contents rewritten (the markers must be there)."""
    start, end = text.index(TOC_START), text.index(TOC_END)
    return f"{text[:start]}{TOC_START}\n**Contents**\n\n{toc(text)}\n{text[end:]}"


def main(argv: list[str]) -> int:
    changed = 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = with_toc(text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed += 1
            print(f"rewrote the contents of {page.relative_to(REPO)}")
    return 0 if changed == 0 or "--check" not in argv else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
