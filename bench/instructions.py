"""Client instructions per RPC under valgrind's callgrind: a count that does not move with machine load.

CPU-time ratios (``python -m bench run``) move by several percent between runs
on a shared machine. Callgrind counts the user-space instructions the client
process executes, which repeat to within about 2 % for the same code and
inputs, so it can tell apart changes of about 5,000 instructions per RPC
(a Python function call costs several hundred), which CPU times here cannot. Kernel work (syscalls, the
loopback network) is not counted, so a ratio here is larger than the CPU
ratio for the same code.

Each variant runs in a fresh process under callgrind twice, with ``n1`` and
``n2`` RPCs after the same set-up; (count(n2) - count(n1)) / (n2 - n1) is
the cost of one RPC, set-up cancelled out. The backends run in a separate
process, not under valgrind. Under callgrind the client runs ~50x slower,
so how grpc batches completions differs from a normal run; compare variants
measured the same way, not these counts with CPU times.

Run as ``python -m bench instructions --mode sync|aio [--variants B,D]``.
The child process is this module run as ``python -m bench.instructions
child MODE VARIANT N TARGETS``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .procs import BackendProcess

__all__ = ["run_instructions"]

_COLLECTED = re.compile(r"Collected : (\d+)")


def _count(mode: str, variant: str, n: int, targets: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
               sys.executable, "-m", "bench.instructions", "child", mode, variant, str(n), ",".join(targets)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    m = _COLLECTED.search(p.stderr)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"callgrind run failed ({p.returncode}): {p.stderr[-2000:]}")
    return int(m.group(1))


def run_instructions(mode: str, variants: list[str], n1: int, n2: int, backends: int = 10) -> list[dict[str, Any]]:
    """Instructions per RPC of each variant, printed as a table and returned."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    rows = []
    with BackendProcess(backends) as bp:
        for v in variants:
            a, b = _count(mode, v, n1, bp.targets), _count(mode, v, n2, bp.targets)
            rows.append({"mode": mode, "variant": v, "instructions_per_rpc": (b - a) / (n2 - n1)})
            print(f"{mode:5s} {v:3s} {rows[-1]['instructions_per_rpc']:10.0f} instructions/RPC", flush=True)
    base = next((r for r in rows if r["variant"] == "B"), None)
    if base is not None:
        for r in rows:
            print(f"{mode:5s} {r['variant']:3s} {r['instructions_per_rpc'] / base['instructions_per_rpc']:.3f} x B")
    return rows


def _child(mode: str, variant: str, n: int, targets: list[str]) -> None:
    from . import variants

    if mode == "sync":
        mc = variants.build(variant, targets, warm_rpcs=100).mc
        for _ in range(n):
            mc(b"x", 10.0)
    else:
        from .modes import aio_loop

        loop = aio_loop()
        amc = variants.build_aio(variant, targets, loop, warm_rpcs=100).mc.mc
        tasks = 32

        async def drive() -> None:
            async def worker() -> None:
                for _ in range(n // tasks):
                    await amc(b"x", timeout=10.0)
            await asyncio.gather(*[worker() for _ in range(tasks)])

        loop.run_until_complete(drive())
    # Skip interpreter and channel shutdown: the same for every n, and slow under valgrind.
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "child":
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split(","))
    else:
        raise SystemExit("usage: python -m bench instructions --help")
