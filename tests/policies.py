"""Balancing policies the matrix tests register as a third party would (``discovery.register_balancer``)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import discovery
from discovery.balancer import Balancer, BalancerBuilder, BalancerHelper, Metadata, Picker, PickResult, SubConn
from discovery.balancer.base import BaseBalancer

__all__ = ["InOrderBuilder", "StalePickBuilder", "StutterBuilder", "registered"]


class _InOrderPicker(Picker):
    """Every backend in resolver order, READY or not: the first pick of a fresh picker is
    always the first address (how a test sends an RPC to a dead backend on purpose)."""

    __slots__ = ("_next", "_results")

    def __init__(self, subconns: Sequence[SubConn]) -> None:
        self._results = tuple(PickResult(sc) for sc in subconns)
        self._next = itertools.count()

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return self._results[next(self._next) % len(self._results)]


class InOrderBuilder(BalancerBuilder):
    """``in_order``: picks cycle over every address in resolver order, starting at the first."""

    name: ClassVar[str] = "in_order"

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        # Rebuilt only when some backend changes state; a test makes its RPC after the
        # backends settled, so its first pick is the first address.
        return BaseBalancer(helper, lambda info: _InOrderPicker(info.subconns) if info.subconns else None)


class _StutterPicker(_InOrderPicker):
    """Resolver order, each backend twice in a row (a, a, b, b, ...): a second pick that
    must avoid the first backend gets it again, unless the channel asks once more."""

    __slots__ = ()

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return self._results[next(self._next) // 2 % len(self._results)]


class StutterBuilder(BalancerBuilder):
    """``stutter``: like ``in_order``, but each backend comes twice in a row."""

    name: ClassVar[str] = "stutter"

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return BaseBalancer(helper, lambda info: _StutterPicker(info.subconns) if info.subconns else None)


class StalePickBuilder(BalancerBuilder):
    """``stale_pick``: always the last address. After :meth:`arm`, the next pick stops
    inside ``pick()`` (sets ``entered``, waits for ``release``) and then returns what the
    picker held: a test removes that backend meanwhile, so the RPC holds a stale pick of
    a backend that is closed by the time it starts (a picker must never block; this one
    does so to make the race of issue 9 happen on demand)."""

    name: ClassVar[str] = "stale_pick"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._armed = False
        self._lock = threading.Lock()

    def arm(self) -> None:
        with self._lock:
            self._armed = True

    def _take(self) -> bool:
        with self._lock:
            armed, self._armed = self._armed, False
            return armed

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        owner = self

        class _Picker(Picker):
            def __init__(self, result: PickResult) -> None:
                self._result = result

            def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
                if owner._take():
                    owner.entered.set()
                    owner.release.wait(30)
                return self._result

        return BaseBalancer(helper, lambda info: _Picker(PickResult(info.ready[-1])) if info.ready else None)


@contextmanager
def registered(builder: BalancerBuilder) -> Iterator[BalancerBuilder]:
    """Register ``builder`` under its name for a block (replacing any other)."""
    discovery.register_balancer(builder, replace=True)
    try:
        yield builder
    finally:
        discovery.unregister_balancer(builder.name)
