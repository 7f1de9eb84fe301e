"""The README's resolver plugin examples run and do what the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(module: str) -> str:
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_polling_example_follows_the_file() -> None:
    out = run("examples.resolver_polling")
    assert out.splitlines() == [
        "backends: 127.0.0.1:50051, 127.0.0.1:50052",
        "after the file changed: 127.0.0.1:50052, 127.0.0.1:50053",
    ]


def test_watch_example_follows_the_registry_and_closes_at_once() -> None:
    out = run("examples.resolver_watch")
    lines = out.splitlines()
    assert lines[:2] == [
        "backends: 127.0.0.1:50051, 127.0.0.1:50052",
        "after the registry changed: 127.0.0.1:50052, 127.0.0.1:50053",
    ]
    m = re.fullmatch(r"closed with a long poll pending in (\d+) ms", lines[2])
    assert m is not None and int(m.group(1)) < 500, out
