"""The READMEs: every intra-document link resolves, and the install, demo and test commands come first."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_readme_links", ROOT / "scripts" / "check_readme_links.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checker_finds_a_broken_link_and_accepts_good_ones(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("# Top\n## A `b` (c)\n## A `b` (c)\n```\n## not a heading\n```\n"
                  "[1](#top) [2](#a-b-c) [3](#a-b-c-1) [4](#not-a-heading) [5](#nope)\n")
    assert checker().broken_links(md) == [f"{md}:7: broken link #not-a-heading", f"{md}:7: broken link #nope"]


def test_every_readme_link_to_a_heading_resolves() -> None:
    assert checker().main([]) == 0


def test_the_install_demo_and_test_commands_are_the_first_section() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = re.search(r"^## (.*)$", text, re.MULTILINE)
    assert first is not None and first.group(1) == "Install, demo, tests"
    section = text[first.end():text.index("\n## ", first.end())]
    for command in ("bash scripts/install.sh", "python3 -m examples.demo", "python3 -m pytest"):
        assert f"`{command}`" in section
