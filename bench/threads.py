"""``python -m bench threads``: peak thread count while many ``.future()`` calls are in flight.

For each case, ``--calls`` futures (200 by default) are started back to back
from one thread against backends that hold each call ``--hold-ms`` (so all
are in flight together), and the process's thread count is sampled every
millisecond until the last one is done. Two variants, side by side in one
run: B (grpcio's native ``round_robin`` channel over the N backends, its own
``.future()``) and D (discovery's ``round_robin`` channel, every future a
grpc.aio call on one shared loop).

Cases:

- ``unary``: unary-unary futures.
- ``unary+retry``: the same with a ``methodConfig`` retry policy (grpcio's
  C-core retries for B; discovery's attempt engine for D).
- ``stream-unary``: client-streaming futures whose request iterator is over a
  list (nothing can block it).
- ``stream-unary gen``: the same with a generator as the request iterator;
  it may block, so both read it on a thread of the call (grpcio always does).

Columns: ``py`` = ``threading.active_count()``, ``os`` = the process's
kernel threads (``/proc/self/status``, grpc's C-core threads included);
``before`` and ``peak`` during the burst; ``starts`` = Python thread starts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

import discovery

from .harness import machine
from .modes import count_thread_starts, thread_starts
from .procs import BackendProcess
from .server import COLLECT, SERVICE, SLEEP

__all__ = ["CASES", "run_threads_bench"]

CASES = ("unary", "unary+retry", "stream-unary", "stream-unary gen")

RETRY = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
    "maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]}}]}


def os_threads() -> int:
    """Kernel threads of this process (Linux), grpc's C-core threads included."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class _Peak:
    """Samples Python and kernel thread counts every millisecond while running."""

    def __init__(self) -> None:
        self.py = self.os = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="bench-thread-sampler")

    def _sample(self) -> None:
        self.py = max(self.py, threading.active_count() - 1)  # not counting the sampler
        self.os = max(self.os, os_threads() - 1)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self._sample()

    def __enter__(self) -> _Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def _open(variant: str, targets: list[str], retry: bool) -> Any:
    sc: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}], **(RETRY if retry else {})}
    if variant == "B":
        ch = grpc.insecure_channel("ipv4:" + ",".join(targets), [
            ("grpc.default_authority", "localhost"), ("grpc.service_config", json.dumps(sc)),
            ("grpc.enable_retries", 1)])
        grpc.channel_ready_future(ch).result(30)
        return ch
    ch = discovery.insecure_channel("static:///" + ",".join(targets), service_config=sc)
    deadline = time.monotonic() + 60
    while not all(b.state is grpc.ChannelConnectivity.READY for b in ch.backends()) or not ch.backends():
        if time.monotonic() > deadline:
            raise TimeoutError("discovery channel not READY")
        time.sleep(0.01)
    return ch


def _starter(ch: Any, case: str, hold: bytes) -> Callable[[], Any]:
    if case.startswith("stream-unary"):
        mc = ch.stream_unary(COLLECT)

        def gen() -> Iterator[bytes]:
            yield hold
            yield b"x"

        if case.endswith("gen"):
            return lambda: mc.future(gen(), 30.0)
        return lambda: mc.future(iter([hold, b"x"]), 30.0)
    mc = ch.unary_unary(SLEEP)
    return lambda: mc.future(hold, 30.0)


def _burst(start: Callable[[], Any], calls: int, n_backends: int) -> dict[str, Any]:
    # Warm: every backend connected and serving futures (D makes each backend's grpc.aio twin here).
    for f in [start() for _ in range(max(64, 3 * n_backends))]:
        f.result(60)
    py0, os0 = threading.active_count(), os_threads()
    done = threading.Event()
    left = [calls]
    lock = threading.Lock()
    errors = [0]

    def on_done(f: Any) -> None:
        if f.code() is not grpc.StatusCode.OK:
            errors[0] += 1
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    t0 = time.perf_counter()
    with _Peak() as peak:
        s0 = thread_starts()  # after the sampler's own start
        for _ in range(calls):
            start().add_done_callback(on_done)
        if not done.wait(120):
            raise TimeoutError(f"{left[0]} of {calls} futures never completed")
    return {"py_before": py0, "py_peak": peak.py, "os_before": os0, "os_peak": peak.os,
            "starts": thread_starts() - s0, "seconds": time.perf_counter() - t0, "errors": errors[0]}


def run_threads_bench(backends: int = 10, calls: int = 200, hold_ms: int = 100, cases: tuple[str, ...] = CASES,
                      json_path: str | None = None, log: Any = sys.stderr) -> dict[str, Any]:
    """Run every case for B and D; print the table; return (and optionally write) the results."""
    count_thread_starts()
    hold = str(hold_ms).encode()
    rows = []
    with BackendProcess(backends, workers=max(64, calls + 16)) as bp:
        for case in cases:
            for variant in ("B", "D"):
                ch = _open(variant, bp.targets, retry=case == "unary+retry")
                try:
                    r = _burst(_starter(ch, case, hold), calls, backends)
                finally:
                    ch.close()
                rows.append({"case": case, "variant": variant, **r})
                print(f"# {case:17} {variant}: py {r['py_before']}->{r['py_peak']}, "
                      f"os {r['os_before']}->{r['os_peak']}, {r['starts']} starts", file=log, flush=True)
    print(format_threads(rows, backends, calls, hold_ms))
    out = {"threads": rows, "machine": machine(),
           "config": {"backends": backends, "calls": calls, "hold_ms": hold_ms, "command": " ".join(sys.argv)}}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
    return out


def format_threads(rows: list[dict[str, Any]], backends: int, calls: int, hold_ms: int) -> str:
    by = {(r["case"], r["variant"]): r for r in rows}
    lines = [f"{calls} concurrent .future() calls, {backends} backends, each held {hold_ms} ms by the server",
             f"{'case':17} | {'B py peak (+)':>13} {'D py peak (+)':>13} | {'B os peak (+)':>13} "
             f"{'D os peak (+)':>13} | {'B starts':>8} {'D starts':>8}"]
    for case in dict.fromkeys(r["case"] for r in rows):
        b, d = by[(case, "B")], by[(case, "D")]

        def cell(r: dict[str, Any], k: str) -> str:
            return f"{r[k + '_peak']} (+{r[k + '_peak'] - r[k + '_before']})"

        lines.append(f"{case:17} | {cell(b, 'py'):>13} {cell(d, 'py'):>13} | {cell(b, 'os'):>13} "
                     f"{cell(d, 'os'):>13} | {b['starts']:>8} {d['starts']:>8}"
                     + ("  errors" if b["errors"] or d["errors"] else ""))
    lines.append("B = grpcio native round_robin channel; D = discovery round_robin. py = Python threads, os = kernel "
                 "threads (C-core included); (+) = above the count just before the burst.")
    return "\n".join(lines)
