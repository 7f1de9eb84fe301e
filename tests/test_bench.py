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


def test_bench_threads_quick_prints_both_variants_for_every_case() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "threads", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    for needle in ("unary+retry", "stream-unary gen", "B py peak", "D py peak"):
        assert needle in out, f"{needle!r} missing from the threads output:\n{out}"


def test_tail_and_picks_quick_run_every_policy() -> None:
    from bench.micro import PICK_CASES, bench_pick
    from bench.tail import POLICIES, run_tail

    rows = bench_pick((10,), 200)
    assert [r["balancer"] for r in rows] == [c[0] for c in PICK_CASES]
    assert all("error" not in r and r["picked"] for r in rows)
    out = run_tail(delays_ms=[1, 1, 10], rounds=1, rpcs=96, concurrency=8, warm_s=0.2)
    assert [r["policy"] for r in out["rows"]] == list(POLICIES)
    assert all(r["errors"] == 0 and r["rpcs"] == 96 for r in out["rows"])
    # discovery's round_robin rotates exactly: a third of the RPCs reach the slow backend.
    assert next(r for r in out["rows"] if r["policy"] == "round_robin")["slow_share"] == 1 / 3


def test_instructions_child_runs_both_modes() -> None:
    # What `python -m bench instructions` runs under callgrind, here without valgrind (too slow for the suite).
    from bench.procs import BackendProcess

    with BackendProcess(2) as bp:
        for mode in ("sync", "aio"):
            for variant in ("B", "D"):
                subprocess.run([sys.executable, "-m", "bench.instructions", "child", mode, variant, "64",
                                ",".join(bp.targets)], cwd=ROOT, timeout=120, check=True, capture_output=True)
