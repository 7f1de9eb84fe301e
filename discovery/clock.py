"""Time as a dependency, so interval and backoff logic is testable without sleeping.

Resolvers and the control loop never call :func:`time.sleep`; they wait on an
event through a :class:`Clock`. Production uses :data:`SYSTEM_CLOCK`; tests pass
:class:`discovery.testing.FakeClock` and advance it by hand.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Backoff", "Clock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time plus an interruptible wait."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds of this clock pass.

        Returns True if the event was set. Thread-safe.
        """
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :meth:`threading.Event.wait`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)


SYSTEM_CLOCK: Clock = SystemClock()


@dataclass(slots=True)
class Backoff:
    """gRPC connection backoff: 1 s initial, x1.6, jitter 0.2, 120 s cap.

    Not thread-safe; each retry loop owns one. :meth:`reset` after a success.
    """

    initial: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    maximum: float = 120.0
    _current: float = 0.0
    _rng: random.Random | None = None

    def next(self) -> float:
        """The next delay in seconds, jittered by +/- ``jitter``."""
        if self._current <= 0:
            self._current = self.initial
        else:
            self._current = min(self._current * self.multiplier, self.maximum)
        rng = self._rng or random
        return max(0.0, self._current * (1 + rng.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self._current = 0.0
