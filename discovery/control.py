"""The control-plane serialiser: one thread per channel runs every state change in order.

Like grpc-go's callback serialiser, resolver updates, connectivity polls,
health changes and timers all run here one at a time, so the manager and the
balancer need no locks of their own. The data plane never waits on this
thread; it only reads the picker the thread last published.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable

from .clock import SYSTEM_CLOCK, Clock

__all__ = ["ControlLoop", "Timer"]

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; :meth:`cancel` is thread-safe and idempotent."""

    __slots__ = ("cancelled", "deadline", "fn")

    def __init__(self, deadline: float, fn: Callable[[], None]) -> None:
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ControlLoop:
    """Runs submitted callables and due timers on one daemon thread, in order.

    Two kinds of timer: :meth:`call_later` runs on real time (connectivity
    polls, drain grace: the machinery that talks to grpc), and
    :meth:`call_later_clock` on the injected ``clock`` (policy and resolver
    intervals: what tests move by hand). With an injected clock that is not
    the system's, the loop re-reads it at least every 0.1 s of real time, so
    a test's ``advance()`` fires due timers promptly.

    ``submit``, ``call_later`` and ``call_later_clock`` are thread-safe and
    never block. An exception from a callable goes to ``on_error`` (default:
    logged) and never stops the loop. ``after_each``, if given, runs on the
    loop thread after every callable and timer, whether it raised or not
    (the channel publishes what other threads read of its state there, once
    the whole change is done).
    """

    def __init__(self, name: str, clock: Clock = SYSTEM_CLOCK,
                 on_error: Callable[[BaseException], None] | None = None,
                 after_each: Callable[[], None] | None = None) -> None:
        self._real = SYSTEM_CLOCK
        self._clock = clock
        self._fake = clock is not SYSTEM_CLOCK
        self._on_error = on_error
        self._after_each = after_each
        self._wake = threading.Event()
        self._queue: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._clock_timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._timers_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def clock(self) -> Clock:
        """The injected clock (what :meth:`call_later_clock` measures)."""
        return self._clock

    @property
    def stopped(self) -> bool:
        return self._stopped

    def in_loop(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread after everything already submitted."""
        self._queue.append(fn)
        self._wake.set()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the loop thread once ``delay`` seconds of real time pass."""
        t = Timer(self._real.monotonic() + max(0.0, delay), fn)
        with self._timers_lock:
            heapq.heappush(self._timers, (t.deadline, next(self._seq), t))
        self._wake.set()
        return t

    def call_later_clock(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the loop thread once ``delay`` seconds of the injected clock pass."""
        if not self._fake:
            return self.call_later(delay, fn)
        t = Timer(self._clock.monotonic() + max(0.0, delay), fn)
        with self._timers_lock:
            heapq.heappush(self._clock_timers, (t.deadline, next(self._seq), t))
        self._wake.set()
        return t

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the callables already queued; wait up to ``timeout`` for it."""
        self._stopped = True
        self._wake.set()
        if not self.in_loop():
            self._thread.join(timeout)

    def _next_timeout(self) -> float | None:
        with self._timers_lock:
            for heap in (self._timers, self._clock_timers):
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)
            timeout = None if not self._timers else max(0.0, self._timers[0][0] - self._real.monotonic())
            if self._clock_timers:
                # Fake time does not pass by itself: look again soon.
                timeout = 0.1 if timeout is None else min(timeout, 0.1)
            return timeout

    @staticmethod
    def _due(heap: list[tuple[float, int, Timer]], now: float, out: list[Timer]) -> None:
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])

    def _run(self) -> None:
        while True:
            timeout = self._next_timeout()
            if timeout is None or timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()
            while self._queue:
                self._call(self._queue.popleft())
            if self._stopped:
                return
            due: list[Timer] = []
            with self._timers_lock:
                self._due(self._timers, self._real.monotonic(), due)
                if self._clock_timers:
                    self._due(self._clock_timers, self._clock.monotonic(), due)
            for t in due:
                if not t.cancelled:
                    self._call(t.fn)

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            if self._on_error is None:
                log.exception("control loop callback %r failed", fn)
            else:
                try:
                    self._on_error(exc)
                except Exception:
                    log.exception("control loop error handler failed")
        if self._after_each is not None:
            try:
                self._after_each()
            except Exception:
                log.exception("control loop after_each hook failed")
