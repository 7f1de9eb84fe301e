"""``round_robin``: every pickable backend in turn; idle backends are asked to connect.

Options beyond gRPC's (which has none): ``panicThreshold`` (percent, default
50, 0 turns panic off) and ``panicMode`` (``"spread"``, the default, or
``"fail"``). When fewer than ``panicThreshold`` % of the backends are
pickable, Envoy's panic mode applies: ``spread`` sends RPCs to every connected
backend, outlier-ejected ones included; ``fail`` fails RPCs fast with an
error saying so (Envoy's ``fail_traffic_on_panic``). Backends failing their
health check are never picked: grpcio's core refuses RPCs to them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    ErrorPicker,
    Metadata,
    Picker,
    QueuePicker,
    SubConn,
    describe_states,
)
from ..errors import ConfigError
from .pick_first import pickable

__all__ = ["Panic", "RoundRobinBuilder", "RoundRobinPicker", "select_with_panic"]

_C = grpc.ChannelConnectivity


@dataclass(frozen=True, slots=True)
class Panic:
    """Envoy's panic threshold (percent of backends pickable) and what to do below it."""

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


def select_with_panic(backends: Sequence[SubConn], panic: Panic) -> tuple[list[SubConn], str]:
    """The backends a picker may use, and a reason when there are none.

    Below the panic threshold, ``spread`` mode widens the set to every READY
    backend (ignoring ejection); ``fail`` mode empties it.
    """
    chosen = [b for b in backends if pickable(b)]
    # Backends still connecting have not shown whether they are usable; they
    # count for neither side, so a channel that is starting up is not in panic.
    n = sum(1 for b in backends if b.state is _C.READY or b.state is _C.TRANSIENT_FAILURE)
    if panic.threshold and n and len(chosen) * 100 < panic.threshold * n:
        why = f"panic: {len(chosen)} of {n} backends usable, below the {panic.threshold}% threshold"
        if panic.mode == "fail":
            return [], why
        wider = [b for b in backends if b.state is _C.READY and b.healthy]
        return wider, why + ("" if wider else f"; {describe_states(backends)}")
    return chosen, describe_states(backends)


class RoundRobinPicker(Picker):
    """Cycles over a fixed tuple of backends.

    ``next()`` on an :func:`itertools.count` is atomic under the GIL, so
    concurrent picks need no lock. The start is random so that many clients
    do not all hit the first backend together (as gRPC does).
    """

    __slots__ = ("_backends", "_counter", "_n")

    def __init__(self, backends: Sequence[SubConn]) -> None:
        self._backends = tuple(backends)
        self._n = len(self._backends)
        self._counter = itertools.count(random.randrange(self._n) if self._n else 0)

    def pick(self, method: str, metadata: Metadata | None) -> SubConn | None:
        return self._backends[next(self._counter) % self._n]


class RoundRobin(Balancer):
    def __init__(self, helper: BalancerHelper, panic: Panic) -> None:
        self._helper = helper
        self._panic = panic
        self._last: tuple[SubConn, ...] | None = None

    def update(self, backends: Sequence[SubConn]) -> None:
        connecting = False
        for b in backends:
            if b.state is _C.IDLE:
                b.connect()
                connecting = True
            elif b.state is _C.CONNECTING:
                connecting = True
        chosen, reason = select_with_panic(backends, self._panic)
        if chosen:
            key = tuple(chosen)
            # An unchanged set keeps the current picker, so its rotation (and
            # the per-backend spread) is not reset by unrelated updates.
            if key != self._last:
                self._last = key
                self._helper.update_picker(_C.READY, RoundRobinPicker(key))
            return
        self._last = None
        if connecting:
            self._helper.update_picker(_C.CONNECTING, QueuePicker(reason))
        else:
            self._helper.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker(reason))


class RoundRobinBuilder(BalancerBuilder):
    name: ClassVar[str] = "round_robin"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> Panic:
        unknown = set(config) - {"panicThreshold", "panicMode"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for round_robin; "
                              "expected panicThreshold, panicMode", key_path=key_path)
        return Panic.parse(config, key_path)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return RoundRobin(helper, config if isinstance(config, Panic) else Panic())
