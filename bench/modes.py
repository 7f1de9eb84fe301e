"""Load shapes: how a client drives one unary multicallable.

Each mode runs ``n`` RPCs on a ready multicallable and returns a
:class:`Sample`. CPU is ``time.process_time()`` over the measured loop, i.e.
every thread of this (client) process: the caller, grpc's spin threads,
discovery's futures loop, pool workers, and discovery's control thread.
Thread starts are counted by wrapping ``threading.Thread.start`` once
(:func:`count_thread_starts`); grpcio's spin threads are
``cygrpc.ForkManagedThread``s around a plain ``threading.Thread``, so they
count too.

``MODES`` is the registry the harness iterates over. The ``aio`` mode
(:func:`run_aio`) takes an :class:`AioTarget` instead of a multicallable: a
grpc.aio multicallable plus the event loop its channel was made on (one
loop per process, :func:`aio_loop`, run on the calling thread only while a
round or a warm-up runs). ``AIO_MODES`` tells the harness which modes want
those.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "AIO_MODES",
    "MODES",
    "AioTarget",
    "Sample",
    "aio_loop",
    "close_aio_loop",
    "count_thread_starts",
    "run_aio",
    "run_future",
    "run_sync",
    "run_threads",
    "thread_starts",
]

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


# -- asyncio ----------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None


def aio_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for the aio mode (made on first use).

    It runs on the calling thread, only inside ``run_until_complete`` (channel
    set-up and warm-up, each measured round, close), like ``asyncio.run`` but
    kept across rounds because grpc.aio channels belong to the loop they were
    made on.
    """
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


def close_aio_loop() -> None:
    """Let the loop finish what closing channels scheduled on it, then close it."""
    global _loop
    loop, _loop = _loop, None
    if loop is None or loop.is_closed():
        return
    try:
        # Closing a channel can schedule more closes (discovery's twins):
        # give the loop a moment, then wait for whatever is left.
        loop.run_until_complete(asyncio.sleep(0.05))
        pending = asyncio.all_tasks(loop)
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@dataclass
class AioTarget:
    """What :func:`run_aio` drives: a grpc.aio unary multicallable and its channel's loop."""

    loop: asyncio.AbstractEventLoop
    mc: Any


async def _aio_window(mc: Any, n: int, window: int) -> Sample:
    lat = [0.0] * n
    pc = time.perf_counter
    nxt = itertools.count().__next__
    errors = [0]

    async def worker() -> None:
        # grpc's own asyncio benchmark client does the same: ``window``
        # coroutines, each awaiting one unary call after the other.
        while (i := nxt()) < n:
            t = pc()
            try:
                await mc(PAYLOAD, timeout=TIMEOUT)
            except grpc.aio.AioRpcError:
                errors[0] += 1
            lat[i] = pc() - t

    t0 = thread_starts()
    c0, w0 = time.process_time(), pc()
    await asyncio.gather(*[worker() for _ in range(window)])
    w1, c1 = pc(), time.process_time()
    return Sample(n, c1 - c0, w1 - w0, lat, thread_starts() - t0, errors[0])


def run_aio(target: AioTarget, n: int, window: int = WINDOW) -> Sample:
    """asyncio: ``window`` tasks on the target's loop, each awaiting unary calls back to back.

    So ``window`` RPCs are in flight until the last ones drain. The measured
    window is inside the coroutine: it excludes starting and stopping the
    loop's ``run_until_complete``; latency is from the call to its ``await``
    returning.
    """
    _prepare()
    return target.loop.run_until_complete(_aio_window(target.mc, n, window))


AIO_MODES = frozenset({"aio"})

MODES: dict[str, Callable[[Any, int], Sample]] = {
    "sync": run_sync,
    "future": run_future,
    "threads": run_threads,
    "aio": run_aio,
}
