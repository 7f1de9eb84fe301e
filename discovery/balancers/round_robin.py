"""``round_robin``: every pickable backend in turn; idle backends are asked to connect."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
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
from .pick_first import pickable

__all__ = ["RoundRobinBuilder", "RoundRobinPicker"]

_C = grpc.ChannelConnectivity


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
    def __init__(self, helper: BalancerHelper) -> None:
        self._helper = helper
        self._last: tuple[SubConn, ...] | None = None

    def update(self, backends: Sequence[SubConn]) -> None:
        ready = []
        connecting = False
        for b in backends:
            if pickable(b):
                ready.append(b)
                continue
            if b.state is _C.IDLE:
                b.connect()
                connecting = True
            elif b.state is _C.CONNECTING:
                connecting = True
        if ready:
            key = tuple(ready)
            # An unchanged ready set keeps the current picker, so its rotation
            # (and the per-backend spread) is not reset by unrelated updates.
            if key != self._last:
                self._last = key
                self._helper.update_picker(_C.READY, RoundRobinPicker(key))
            return
        self._last = None
        reason = describe_states(backends)
        if connecting:
            self._helper.update_picker(_C.CONNECTING, QueuePicker(reason))
        else:
            self._helper.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker(reason))


class RoundRobinBuilder(BalancerBuilder):
    name: ClassVar[str] = "round_robin"

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return RoundRobin(helper)
