"""Weighted picking and slow start, shared by round_robin, weighted_round_robin and least_request.

- :class:`EdfPicker`: gRFC A58's earliest-deadline-first scheduler over
  fixed weights. Each backend's next deadline is its last one plus
  1/weight; a pick takes the earliest. Over any stretch of picks each
  backend gets its share of them to within one pick, interleaved smoothly
  (no bursts to one backend).
- :class:`SlowStart` and :class:`RampTracker`: Envoy's ``slow_start_config``.
  A backend that becomes usable after the policy's first picker, ``t``
  seconds ago, gets ``weight * max(minWeightPercent/100,
  (t/window) ** (1/aggression))`` until ``window`` has passed.
- :class:`SlowStartBalancer`: :class:`~discovery.balancer.base.BaseBalancer`
  plus the tracker and a timer that rebuilds the picker while a backend ramps.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..durations import parse_duration
from ..errors import ConfigError
from . import BalancerHelper, Cancellable, Metadata, Picker, PickResult, SubConn, usable
from .base import BaseBalancer, PickerInfo

__all__ = ["EdfPicker", "RampTracker", "SlowStart", "SlowStartBalancer", "WeightedChoice"]

_heappop = heapq.heappop
_heappush = heapq.heappush


class EdfPicker(Picker):
    """Earliest deadline first over ``results`` with ``weights`` (all > 0).

    Takes no lock: a pick is one ``heappop`` and one ``heappush``, each a
    single C call that holds the GIL throughout (entries are tuples of a
    float and an int, so comparing them runs no Python code). Threads that
    pick at once each pop a different entry; one that finds the heap
    momentarily empty (as many threads picking as there are backends) falls
    back to rotation. Initial deadlines are random within one period, so
    many clients built at once do not pick in lockstep (as gRFC A58 says).
    """

    __slots__ = ("_heap", "_inv", "_n", "_results", "_rr")

    def __init__(self, results: Sequence[PickResult], weights: Sequence[float], rng: random.Random | None = None
                 ) -> None:
        if len(results) != len(weights) or not results:
            raise ValueError("EdfPicker needs one positive weight per result, and at least one result")
        rnd = (rng or random).random
        mean = sum(weights) / len(weights)
        # Deadlines in units of "one mean pick", so they grow at the same pace whatever the weights' scale.
        self._inv = tuple(mean / w for w in weights)
        self._heap = [(rnd() * inv, i) for i, inv in enumerate(self._inv)]
        heapq.heapify(self._heap)
        self._results = tuple(results)
        self._n = len(self._results)
        self._rr = itertools.count()

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        try:
            d, i = _heappop(self._heap)
        except IndexError:
            return self._results[next(self._rr) % self._n]
        _heappush(self._heap, (d + self._inv[i], i))
        return self._results[i]


class WeightedChoice:
    """A random index with probability proportional to its weight (prefix sums and bisect)."""

    __slots__ = ("_cum", "_total")

    def __init__(self, weights: Sequence[float]) -> None:
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1]

    def __call__(self, rnd: Callable[[], float] = random.random) -> int:
        i = bisect.bisect_right(self._cum, rnd() * self._total)
        return min(i, len(self._cum) - 1)


@dataclass(frozen=True, slots=True)
class SlowStart:
    """Envoy's slow_start_config: ``window`` seconds, ``aggression``, ``min_weight_percent``."""

    window: float = 30.0
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    KEYS = frozenset({"window", "aggression", "minWeightPercent"})

    @classmethod
    def parse(cls, raw: Any, key_path: str) -> SlowStart:
        """Parse ``slowStart = {window, aggression, minWeightPercent}``; ConfigError naming the key."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected an object with some of {sorted(cls.KEYS)}, got {raw!r}", key_path=key_path)
        unknown = set(raw) - cls.KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected some of {sorted(cls.KEYS)}",
                              key_path=key_path)
        window = parse_duration(raw.get("window", "30s"), key_path=f"{key_path}.window")
        if window <= 0:
            raise ConfigError("window must be > 0", key_path=f"{key_path}.window")
        aggression = raw.get("aggression", 1.0)
        if not isinstance(aggression, int | float) or isinstance(aggression, bool) or not aggression > 0:
            raise ConfigError(f"expected a number > 0, got {aggression!r}", key_path=f"{key_path}.aggression")
        pct = raw.get("minWeightPercent", 10)
        if not isinstance(pct, int | float) or isinstance(pct, bool) or not 0 <= pct <= 100:
            raise ConfigError(f"expected a percentage 0..100, got {pct!r}", key_path=f"{key_path}.minWeightPercent")
        return cls(window, float(aggression), float(pct))

    def factor(self, age: float) -> float:
        """The weight multiplier of a backend usable for ``age`` seconds (1.0 once the window has passed)."""
        if age >= self.window:
            return 1.0
        ramp: float = (max(age, 0.0) / self.window) ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)


class RampTracker:
    """Which backends are ramping up, and by how much. Control thread only.

    Backends of the address sets seen until the first picker with a usable
    backend ("present at start") do not ramp when they first become usable;
    every later transition to usable (a new backend, or one back from a
    failure or an ejection) starts a ramp of ``window`` seconds.
    """

    def __init__(self, config: SlowStart, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self._started = False
        self._fresh: set[str] = set()       # present at start, not yet usable once
        self._usable: set[str] = set()      # usable at the last observe()
        self._since: dict[str, float] = {}  # ramping backends: when they became usable

    def observe(self, subconns: Sequence[SubConn]) -> None:
        """Record the backends' current usability (call before building each picker)."""
        now = self._clock.monotonic()
        addrs = {sc.addr for sc in subconns}
        usable_now = {sc.addr for sc in subconns if usable(sc)}
        if not self._started:
            self._fresh |= addrs
            self._started = bool(usable_now)
        for addr in usable_now - self._usable:
            if addr in self._fresh:
                self._fresh.discard(addr)
            else:
                self._since[addr] = now
        for addr in self._usable - usable_now:
            self._since.pop(addr, None)
        self._usable = usable_now
        self._fresh &= addrs
        for addr in [a for a, t in self._since.items() if now - t >= self.config.window]:
            del self._since[addr]

    def factor(self, addr: str) -> float:
        """``addr``'s slow-start multiplier now (1.0 when it is not ramping)."""
        since = self._since.get(addr)
        if since is None:
            return 1.0
        return self.config.factor(self._clock.monotonic() - since)

    @property
    def ramping(self) -> bool:
        return bool(self._since)

    @property
    def step(self) -> float:
        """How often to rebuild the picker while a backend ramps: 1/20 of the window, 0.1 s .. 1 s."""
        return min(1.0, max(0.1, self.config.window / 20))


class SlowStartBalancer(BaseBalancer):
    """A :class:`BaseBalancer` whose picker builder can read :attr:`ramp` (None without slow start).

    While a backend ramps, the picker is rebuilt every :attr:`RampTracker.step`
    seconds of the helper's clock.
    """

    def __init__(self, helper: BalancerHelper, build_picker: Callable[[PickerInfo], Picker | None],
                 slow_start: SlowStart | None) -> None:
        super().__init__(helper, self._build)
        self.ramp = None if slow_start is None else RampTracker(slow_start, helper.clock)
        self._inner = build_picker
        self._timer: Cancellable | None = None
        self._closed = False

    def _build(self, info: PickerInfo) -> Picker | None:
        ramp = self.ramp
        if ramp is not None:
            ramp.observe(info.subconns)
        picker = self._inner(info)
        if ramp is not None and ramp.ramping and self._timer is None and not self._closed:
            self._timer = self.helper.schedule(ramp.step, self._tick)
        return picker

    def _tick(self) -> None:
        self._timer = None
        if not self._closed:
            self.regenerate(force=True)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
