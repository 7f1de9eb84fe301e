"""The benchmark harness runs (tiny counts): benchmarks are measured, never asserted, but must not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_every_variant_and_mode() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for needle in ("X/A", "X/B", "sync", "future", "threads", "aio"):
        assert needle in out, f"{needle!r} missing from the harness output:\n{out}"
