"""Check that every intra-document link ``](#anchor)`` in the READMEs resolves to a heading.

    python3 scripts/check_readme_links.py [FILE.md ...]

With no arguments it checks README.md and every plugins/**/README.md. Anchors
are made as GitHub makes them: the heading's text lower-cased, backticks and
punctuation other than ``-`` and ``_`` dropped, spaces made ``-``; a repeated
heading gets ``-1``, ``-2``... Headings inside fenced code blocks do not
count. Exit code 1 and one line per broken link when any is broken.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor the headings of a markdown text define."""
    seen: Counter[str] = Counter()
    out: set[str] = set()
    fenced = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            s = slug(m.group(1))
            out.add(s if not seen[s] else f"{s}-{seen[s]}")
            seen[s] += 1
    return out


def broken_links(path: Path) -> list[str]:
    """``file:line: #anchor`` for each link to an anchor no heading defines."""
    text = path.read_text(encoding="utf-8")
    known = anchors(text)
    out = []
    for number, line in enumerate(text.split("\n"), 1):
        for anchor in re.findall(r"\]\(#([^)\s]+)\)", line):
            if anchor not in known:
                out.append(f"{path}:{number}: broken link #{anchor}")
    return out


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [ROOT / "README.md", *sorted((ROOT / "plugins").glob("**/README.md"))]
    problems = [p for path in paths for p in broken_links(path)]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
