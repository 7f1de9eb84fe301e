"""``least_request`` (gRFC A48): power of ``choiceCount`` choices.

gRPC's spelling ``least_request_experimental`` selects it too (as every
``*_experimental`` name does in ``loadBalancingConfig``).

Each pick draws ``choiceCount`` usable backends at random (with
replacement, as gRPC does) and takes the one with the fewest RPCs in
flight. The policy counts in-flight RPCs itself: one more at the pick, one
less in the pick's ``done`` (called for every pick, sent or not), so the
count is this channel's view, whatever other policies or channels do.

Config: ``choiceCount`` (default 2; below 2 is an error, above 10 is taken
as 10, as gRFC A48 says) and ``slowStart`` (see
:mod:`discovery.balancer.weights`): a ramping backend is drawn as a
candidate with probability proportional to its slow-start weight.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..balancer import (
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
from ..balancer.base import PickerInfo
from ..balancer.weights import SlowStart, SlowStartBalancer, WeightedChoice
from ..errors import ConfigError

__all__ = ["InFlight", "LeastRequestBuilder", "LeastRequestConfig", "LeastRequestPicker"]

_random = random.random


class InFlight:
    """One backend's RPCs in flight as this policy counts them, and its pick result.

    ``n`` is read without a lock (one attribute read); changed under ``lock``
    by picks and ``done`` callbacks on any thread.
    """

    __slots__ = ("lock", "n", "result", "subconn")

    def __init__(self, subconn: SubConn) -> None:
        self.subconn = subconn
        self.n = 0
        self.lock = threading.Lock()
        # Built once: a pick allocates nothing.
        self.result = PickResult(subconn, self.done)

    def take(self) -> PickResult:
        with self.lock:
            self.n += 1
        return self.result

    def done(self, info: DoneInfo) -> None:
        with self.lock:
            self.n -= 1


class LeastRequestPicker(Picker):
    """Power of ``choices`` choices over ``loads``; with ``weights``, candidates are drawn by weight."""

    __slots__ = ("_choices", "_loads", "_n", "_weighted")

    def __init__(self, loads: Sequence[InFlight], choices: int, weights: Sequence[float] | None = None) -> None:
        self._loads = tuple(loads)
        self._n = len(self._loads)
        self._choices = choices
        self._weighted = None if weights is None else WeightedChoice(weights)

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        loads = self._loads
        if self._weighted is not None:
            draw = self._weighted
            best = loads[draw()]
            for _ in range(self._choices - 1):
                c = loads[draw()]
                if c.n < best.n:
                    best = c
            return best.take()
        n = self._n
        best = loads[int(_random() * n)]
        if self._choices == 2:
            c = loads[int(_random() * n)]
            if c.n < best.n:
                best = c
        else:
            for _ in range(self._choices - 1):
                c = loads[int(_random() * n)]
                if c.n < best.n:
                    best = c
        return best.take()


@dataclass(frozen=True, slots=True)
class LeastRequestConfig:
    choice_count: int = 2
    slow_start: SlowStart | None = None


class LeastRequest(SlowStartBalancer):
    """Keeps one :class:`InFlight` per backend across pickers (counts survive a new picker)."""

    def __init__(self, helper: BalancerHelper, cfg: LeastRequestConfig) -> None:
        super().__init__(helper, self._picker, cfg.slow_start)
        self._cfg = cfg
        self.loads: dict[SubConn, InFlight] = {}

    def update_state(self, state: BalancerState) -> None:
        live = set(state.subconns)
        self.loads = {sc: ld for sc, ld in self.loads.items() if sc in live}
        super().update_state(state)

    def _picker(self, info: PickerInfo) -> Picker | None:
        if not info.ready:
            return None
        loads = [self.loads.get(sc) or self.loads.setdefault(sc, InFlight(sc)) for sc in info.ready]
        weights = None
        ramp = self.ramp
        if ramp is not None and ramp.ramping:
            factors = [ramp.factor(sc.addr) for sc in info.ready]
            if min(factors) < 1.0:
                weights = factors
        return LeastRequestPicker(loads, self._cfg.choice_count, weights)


class LeastRequestBuilder(BalancerBuilder):
    name: ClassVar[str] = "least_request"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> LeastRequestConfig:
        unknown = set(config) - {"choiceCount", "slowStart"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for {self.name}; "
                              "expected choiceCount, slowStart", key_path=key_path)
        n = config.get("choiceCount", 2)
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ConfigError(f"expected an integer >= 2 (values above 10 mean 10), got {n!r}",
                              key_path=f"{key_path}.choiceCount")
        slow = SlowStart.parse(config["slowStart"], f"{key_path}.slowStart") if "slowStart" in config else None
        return LeastRequestConfig(min(n, 10), slow)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return LeastRequest(helper, config if isinstance(config, LeastRequestConfig) else LeastRequestConfig())
