"""``peak_ewma`` (Finagle, Linkerd): the backend with the lowest expected latency x load.

Each backend keeps a peak-sensitive moving average of its RPC latency: a
slower response than the estimate replaces it at once (the peak), a faster
one pulls it down with weight ``1 - exp(-elapsed / decay)``, so the estimate
forgets over about ``decay`` seconds, whatever the request rate. With no
response the estimate decays towards zero, so an idle backend is tried
again. A pick draws two distinct usable backends at random (power of two
choices) and takes the one with the lower cost = estimate x (in-flight + 1),
with the in-flight count kept by the policy (one more at the pick, one less
in ``done``).

Config: ``decay`` (duration, default ``"10s"``), ``defaultRtt`` (duration,
default ``"0.03s"``, Linkerd's; the estimate of a backend with no response
yet) and ``failurePenalty`` (duration, default 10 x ``defaultRtt``): an
attempt that fails with UNAVAILABLE, INTERNAL, UNKNOWN or DEADLINE_EXCEEDED
counts as a response that took at least this long, so a backend that fails
fast does not look fast. A cancelled attempt only leaves the in-flight count.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import (
    DEFAULT_FAILURE_CODES,
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    BalancerState,
    DoneInfo,
    Metadata,
    Picker,
    PickResult,
    SubConn,
)
from ..balancer.base import BaseBalancer, PickerInfo
from ..clock import SYSTEM_CLOCK
from ..durations import parse_duration
from ..errors import ConfigError

__all__ = ["Ewma", "PeakEwmaBuilder", "PeakEwmaConfig", "PeakEwmaPicker"]

_random = random.random
_exp = math.exp
_CANCELLED = grpc.StatusCode.CANCELLED


@dataclass(frozen=True, slots=True)
class PeakEwmaConfig:
    decay: float = 10.0
    default_rtt: float = 0.03
    failure_penalty: float = 0.3


class Ewma:
    """One backend's latency estimate and in-flight count.

    ``est`` is one tuple ``(seconds, when)`` so a pick reads it whole without
    a lock; ``done`` callbacks (any thread) update both under ``lock``.
    """

    __slots__ = ("_decay", "_now", "_penalty", "est", "lock", "n", "result", "subconn")

    def __init__(self, subconn: SubConn, cfg: PeakEwmaConfig, now: Callable[[], float]) -> None:
        self.subconn = subconn
        self._decay = cfg.decay
        self._penalty = cfg.failure_penalty
        self._now = now
        self.n = 0
        self.lock = threading.Lock()
        self.est = (cfg.default_rtt, now())
        self.result = PickResult(subconn, self.done)

    def cost(self, now: float) -> float:
        """Estimate decayed to ``now`` (towards zero while no response comes) x (in flight + 1)."""
        rtt, at = self.est
        if now > at:
            rtt *= _exp((at - now) / self._decay)
        return rtt * (self.n + 1)

    def take(self) -> PickResult:
        with self.lock:
            self.n += 1
        return self.result

    def done(self, info: DoneInfo) -> None:
        code = info.code
        if not info.attempted or code is _CANCELLED:
            with self.lock:
                self.n -= 1
            return
        rtt = info.latency
        if code in DEFAULT_FAILURE_CODES:
            rtt = max(rtt, self._penalty)
        now = self._now()
        with self.lock:
            self.n -= 1
            # Peak first: a slower response replaces the estimate at once; a
            # faster one pulls it down by how much time passed since the last.
            est, at = self.est
            if rtt < est:
                w = _exp((at - now) / self._decay) if now > at else 1.0
                rtt = est * w + rtt * (1.0 - w)
            self.est = (rtt, now)


class PeakEwmaPicker(Picker):
    """Power of two (distinct) choices by :meth:`Ewma.cost`."""

    __slots__ = ("_n", "_now", "_states")

    def __init__(self, states: Sequence[Ewma], now: Callable[[], float]) -> None:
        self._states = tuple(states)
        self._n = len(self._states)
        self._now = now

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        n = self._n
        states = self._states
        if n == 1:
            return states[0].take()
        i = int(_random() * n)
        j = int(_random() * (n - 1))
        if j >= i:
            j += 1
        a, b = states[i], states[j]
        now = self._now()
        return (a if a.cost(now) <= b.cost(now) else b).take()


class PeakEwma(BaseBalancer):
    """Keeps one :class:`Ewma` per backend across pickers."""

    def __init__(self, helper: BalancerHelper, cfg: PeakEwmaConfig) -> None:
        super().__init__(helper, self._picker)
        self._cfg = cfg
        clock = helper.clock
        # The system clock's reading without its method call: this runs twice per RPC.
        self._now: Callable[[], float] = time.monotonic if clock is SYSTEM_CLOCK else clock.monotonic
        self.states: dict[SubConn, Ewma] = {}

    def update_state(self, state: BalancerState) -> None:
        live = set(state.subconns)
        self.states = {sc: st for sc, st in self.states.items() if sc in live}
        super().update_state(state)

    def _picker(self, info: PickerInfo) -> Picker | None:
        if not info.ready:
            return None
        states = [self.states.get(sc) or self.states.setdefault(sc, Ewma(sc, self._cfg, self._now))
                  for sc in info.ready]
        return PeakEwmaPicker(states, self._now)


def _duration(config: Mapping[str, Any], key: str, default: str, key_path: str) -> float:
    v = parse_duration(config.get(key, default), key_path=f"{key_path}.{key}")
    if v <= 0:
        raise ConfigError(f"expected a duration > 0, got {config.get(key)!r}", key_path=f"{key_path}.{key}")
    return v


class PeakEwmaBuilder(BalancerBuilder):
    name: ClassVar[str] = "peak_ewma"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> PeakEwmaConfig:
        unknown = set(config) - {"decay", "defaultRtt", "failurePenalty"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for peak_ewma; "
                              "expected decay, defaultRtt, failurePenalty", key_path=key_path)
        decay = _duration(config, "decay", "10s", key_path)
        rtt = _duration(config, "defaultRtt", "0.03s", key_path)
        penalty = _duration(config, "failurePenalty", "", key_path) if "failurePenalty" in config else 10 * rtt
        return PeakEwmaConfig(decay, rtt, penalty)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return PeakEwma(helper, config if isinstance(config, PeakEwmaConfig) else PeakEwmaConfig())
