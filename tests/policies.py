"""Balancing policies the matrix tests register as a third party would (``discovery.register_balancer``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import discovery
from discovery.balancer import Balancer, BalancerBuilder, BalancerHelper, Metadata, Picker, PickResult, SubConn
from discovery.balancer.base import BaseBalancer

__all__ = ["InOrderBuilder", "StutterBuilder", "registered"]


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


@contextmanager
def registered(builder: BalancerBuilder) -> Iterator[BalancerBuilder]:
    """Register ``builder`` under its name for a block (replacing any other)."""
    discovery.register_balancer(builder, replace=True)
    try:
        yield builder
    finally:
        discovery.unregister_balancer(builder.name)
