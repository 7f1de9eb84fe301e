"""Load shapes: how a client drives one unary multicallable.

Each mode runs ``n`` RPCs on a ready multicallable and returns a
:class:`Sample`. CPU is ``time.process_time()`` over the measured loop, i.e.
every thread of this (client) process: the caller, grpc's spin threads,
discovery's futures loop, pool workers, and discovery's control thread.
Thread starts are counted by wrapping ``threading.Thread.start`` once
(:func:`count_thread_starts`); grpcio's spin threads are
``cygrpc.ForkManagedThread``s around a plain ``threading.Thread``, so they
count too.

``MODES`` is the registry the harness iterates over (an asyncio mode would
plug in there).
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["MODES", "Sample", "count_thread_starts", "run_future", "run_sync", "run_threads", "thread_starts"]

PAYLOAD = b"x" * 16
TIMEOUT = 30.0
WINDOW = 32
THREADS = 32
_OK = grpc.StatusCode.OK

_counter = itertools.count()
_starts = 0
_counting = False


def count_thread_starts() -> None:
    """Wrap ``threading.Thread.start`` to count starts (idempotent)."""
    global _counting
    if _counting:
        return
    orig = threading.Thread.start

    def start(self: threading.Thread, *a: Any, **k: Any) -> None:
        global _starts
        _starts = next(_counter) + 1
        orig(self, *a, **k)

    threading.Thread.start = start  # type: ignore[method-assign]
    _counting = True


def thread_starts() -> int:
    """Thread starts since :func:`count_thread_starts` (monotonic)."""
    return _starts


@dataclass
class Sample:
    """One measured loop."""

    n: int
    cpu: float  # seconds of process CPU
    wall: float  # seconds
    latencies: list[float] = field(repr=False)  # seconds, one per RPC (may be empty)
    thread_starts: int
    errors: int = 0

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.n * 1e6

    @property
    def rps(self) -> float:
        return self.n / self.wall

    def pct(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) in microseconds; NaN without latencies."""
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1e6


def _prepare() -> None:
    gc.collect()


def run_sync(mc: Any, n: int) -> Sample:
    """Blocking unary calls, one after another, on the calling thread."""
    _prepare()
    lat = [0.0] * n
    pc = time.perf_counter
    t0 = thread_starts()
    c0, w0 = time.process_time(), pc()
    for i in range(n):
        t = pc()
        mc(PAYLOAD, TIMEOUT)
        lat[i] = pc() - t
    w1, c1 = pc(), time.process_time()
    return Sample(n, c1 - c0, w1 - w0, lat, thread_starts() - t0)


def run_future(mc: Any, n: int, window: int = WINDOW) -> Sample:
    """``.future()`` from the calling thread with ``window`` RPCs outstanding.

    Latency is from issue to the done-callback.
    """
    _prepare()
    lat = [0.0] * n
    starts = [0.0] * n
    pc = time.perf_counter
    sem = threading.Semaphore(window)
    done = threading.Event()
    lock = threading.Lock()
    left = [n]
    errors = [0]

    def on_done(i: int, f: Any) -> None:
        lat[i] = pc() - starts[i]
        if f.code() is not _OK:
            errors[0] += 1
        sem.release()
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    cbs = [(lambda f, i=i: on_done(i, f)) for i in range(n)]  # built outside the measured loop
    fut = mc.future
    t0 = thread_starts()
    c0, w0 = time.process_time(), pc()
    for i in range(n):
        sem.acquire()
        starts[i] = pc()
        fut(PAYLOAD, TIMEOUT).add_done_callback(cbs[i])
    if not done.wait(120):
        raise TimeoutError(f"futures: {left[0]} of {n} RPCs never completed")
    w1, c1 = pc(), time.process_time()
    return Sample(n, c1 - c0, w1 - w0, lat, thread_starts() - t0, errors[0])


def run_threads(mc: Any, n: int, threads: int = THREADS) -> Sample:
    """``threads`` threads, each doing blocking unary calls back to back."""
    _prepare()
    per = max(1, n // threads)
    total = per * threads
    lats: list[list[float]] = [[0.0] * per for _ in range(threads)]
    go = threading.Event()
    pc = time.perf_counter

    def work(out: list[float]) -> None:
        go.wait()
        for i in range(per):
            t = pc()
            mc(PAYLOAD, TIMEOUT)
            out[i] = pc() - t

    ts = [threading.Thread(target=work, args=(lats[k],), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    t0 = thread_starts()
    c0, w0 = time.process_time(), pc()
    go.set()
    for t in ts:
        t.join()
    w1, c1 = pc(), time.process_time()
    flat = [x for part in lats for x in part]
    return Sample(total, c1 - c0, w1 - w0, flat, thread_starts() - t0)


MODES: dict[str, Callable[[Any, int], Sample]] = {
    "sync": run_sync,
    "future": run_future,
    "threads": run_threads,
}
