"""``round_robin``: every usable backend in turn; idle backends are asked to connect.

Options beyond gRPC's (which has none): ``panicThreshold`` (percent, default
50, 0 turns panic off) and ``panicMode`` (``"spread"``, the default, or
``"fail"``). When fewer than ``panicThreshold`` % of the backends that have
settled are usable, Envoy's panic mode applies: ``spread`` sends RPCs to
every connected backend, outlier-ejected ones included; ``fail`` fails RPCs
fast with an error saying so (Envoy's ``fail_traffic_on_panic``). Backends
failing their health check are never picked: grpcio's core refuses RPCs to
them.

``slowStart = {window, aggression, minWeightPercent}`` (Envoy's
slow_start_config, see :mod:`discovery.balancer.weights`): a backend that
becomes usable after the first picker gets a growing share of the rotation
over ``window`` (default ``"30s"``) instead of its full share at once.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import Balancer, BalancerBuilder, BalancerHelper, ErrorPicker, Metadata, Picker, PickResult, SubConn
from ..balancer.base import BaseBalancer, PickerInfo
from ..balancer.weights import EdfPicker, SlowStart, SlowStartBalancer
from ..errors import ConfigError

__all__ = ["Panic", "RoundRobinBuilder", "RoundRobinConfig", "RoundRobinPicker", "select_with_panic"]

_C = grpc.ChannelConnectivity


@dataclass(frozen=True, slots=True)
class Panic:
    """Envoy's panic threshold (percent of backends usable) and what to do below it."""

    threshold: int = 50
    mode: str = "spread"

    @classmethod
    def parse(cls, config: Mapping[str, Any], key_path: str) -> Panic:
        t = config.get("panicThreshold", 50)
        if not isinstance(t, int | float) or isinstance(t, bool) or not 0 <= t <= 100:
            raise ConfigError(f"expected a percentage 0..100, got {t!r}", key_path=f"{key_path}.panicThreshold")
        mode = config.get("panicMode", "spread")
        if mode not in ("spread", "fail"):
            raise ConfigError(f"expected \"spread\" or \"fail\", got {mode!r}", key_path=f"{key_path}.panicMode")
        return cls(int(t), mode)


def select_with_panic(info: PickerInfo, panic: Panic) -> tuple[Sequence[SubConn], str]:
    """The backends a picker may use, and a reason when panic mode acts (else "").

    Below the panic threshold, ``spread`` widens the set to every READY
    backend (ignoring outlier ejection); ``fail`` empties it.
    """
    ready, subconns = info.ready, info.subconns
    # Backends still connecting have not shown whether they are usable; they
    # count for neither side, so a channel that is starting up is not in panic.
    n = sum(1 for b in subconns if b.state is _C.READY or b.state is _C.TRANSIENT_FAILURE)
    if panic.threshold and n and len(ready) * 100 < panic.threshold * n:
        why = f"panic: {len(ready)} of {n} backends usable, below the {panic.threshold}% threshold"
        if panic.mode == "fail":
            return (), why
        return tuple(b for b in subconns if b.state is _C.READY), why
    return ready, ""


class RoundRobinPicker(Picker):
    """Cycles over a fixed tuple of backends.

    ``next()`` on an :func:`itertools.count` is atomic under the GIL, so
    concurrent picks need no lock. The start is random so that many clients
    do not all hit the first backend together (as gRPC does). The results
    are built once, so a pick allocates nothing.
    """

    __slots__ = ("_counter", "_n", "_results")

    def __init__(self, subconns: Sequence[SubConn]) -> None:
        self._results = tuple(PickResult(sc) for sc in subconns)
        self._n = len(self._results)
        self._counter = itertools.count(random.randrange(self._n) if self._n else 0)

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return self._results[next(self._counter) % self._n]


class _Builder:
    """round_robin's picker builder: keeps its picker while the chosen backends stay the same.

    While a backend ramps up (slow start) the picker is an EDF one over the
    slow-start weights, rebuilt as they grow.
    """

    __slots__ = ("_last", "_panic", "balancer")

    def __init__(self, panic: Panic) -> None:
        self._panic = panic
        self._last: tuple[tuple[SubConn, ...], Picker] | None = None
        self.balancer: SlowStartBalancer | None = None

    def __call__(self, info: PickerInfo) -> Picker | None:
        chosen, why = select_with_panic(info, self._panic)
        if not chosen:
            self._last = None
            # Panic "fail" says so; with nothing connected at all, panic changes
            # nothing and the base explains the backends' states instead.
            return ErrorPicker(why) if why and self._panic.mode == "fail" else None
        ramp = None if self.balancer is None else self.balancer.ramp
        if ramp is not None and ramp.ramping:
            factors = [ramp.factor(sc.addr) for sc in chosen]
            if min(factors) < 1.0:
                self._last = None
                return EdfPicker([PickResult(sc) for sc in chosen], factors)
        key = tuple(chosen)
        if self._last is None or self._last[0] != key:
            self._last = (key, RoundRobinPicker(key))
        return self._last[1]


@dataclass(frozen=True, slots=True)
class RoundRobinConfig:
    panic: Panic = Panic()
    slow_start: SlowStart | None = None


class RoundRobinBuilder(BalancerBuilder):
    name: ClassVar[str] = "round_robin"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> RoundRobinConfig:
        unknown = set(config) - {"panicThreshold", "panicMode", "slowStart"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for round_robin; "
                              "expected panicThreshold, panicMode, slowStart", key_path=key_path)
        slow = SlowStart.parse(config["slowStart"], f"{key_path}.slowStart") if "slowStart" in config else None
        return RoundRobinConfig(Panic.parse(config, key_path), slow)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        cfg = config if isinstance(config, RoundRobinConfig) else RoundRobinConfig()
        builder = _Builder(cfg.panic)
        if cfg.slow_start is None:
            return BaseBalancer(helper, builder)
        bal = SlowStartBalancer(helper, builder, cfg.slow_start)
        builder.balancer = bal
        return bal
