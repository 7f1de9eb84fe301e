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

    ``submit`` and ``call_later`` are thread-safe and never block. Exceptions
    from a callable are logged and do not stop the loop.
    """

    def __init__(self, name: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._wake = threading.Event()
        self._queue: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._timers_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def clock(self) -> Clock:
        return self._clock

    def in_loop(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread after everything already submitted."""
        self._queue.append(fn)
        self._wake.set()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the loop thread once ``delay`` seconds of the clock pass."""
        t = Timer(self._clock.monotonic() + max(0.0, delay), fn)
        with self._timers_lock:
            heapq.heappush(self._timers, (t.deadline, next(self._seq), t))
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
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers:
                return None
            return max(0.0, self._timers[0][0] - self._clock.monotonic())

    def _run(self) -> None:
        while True:
            timeout = self._next_timeout()
            if timeout is None or timeout > 0:
                self._clock.wait(self._wake, timeout)
            self._wake.clear()
            while self._queue:
                self._call(self._queue.popleft())
            if self._stopped:
                return
            now = self._clock.monotonic()
            due: list[Timer] = []
            with self._timers_lock:
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
            for t in due:
                if not t.cancelled:
                    self._call(t.fn)

    @staticmethod
    def _call(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("control loop callback %r failed", fn)
