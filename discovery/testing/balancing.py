"""Fakes for testing balancing policies without a channel: subconns and a helper.

A policy under test gets a :class:`FakeHelper` (it records every picker,
runs timers on a :class:`~discovery.testing.FakeClock` when the test says
so, and records ejections) and :class:`FakeSubConn` backends whose state the
test sets by hand before calling ``subconn_state``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..address import Address, ResolverState
from ..balancer import Balancer, BalancerState, Cancellable, DoneInfo, Picker, PickResult, SubConn
from ..clock import Clock

__all__ = ["FakeHelper", "FakeSubConn", "finish", "pick_all"]


@dataclass(eq=False)
class FakeSubConn:
    """A backend stand-in for balancer tests; ``connect()`` calls are counted."""

    address: Address
    state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.IDLE
    healthy: bool = True
    last_error: str = ""
    connects: int = field(default=0)

    @property
    def addr(self) -> str:
        return self.address.addr

    @property
    def backend(self) -> Any:
        return self

    def connect(self) -> None:
        self.connects += 1

    def __repr__(self) -> str:
        return f"<FakeSubConn {self.addr} {self.state.name}{'' if self.healthy else ' unhealthy'}>"


class _Timer:
    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeHelper:
    """A :class:`~discovery.balancer.BalancerHelper` that records what a policy does.

    ``updates`` holds every (state, picker) published; ``ejections`` every
    (address, ejected) reported. Timers run only in :meth:`run_due`, on
    ``clock`` (advance the clock, then call it). Single-threaded: call
    everything from the test's thread.
    """

    def __init__(self, clock: Clock, target: str = "test:///fake") -> None:
        self._clock = clock
        self._target = target
        self.updates: list[tuple[grpc.ChannelConnectivity, Picker]] = []
        self.ejections: list[tuple[str, bool]] = []
        self.resolve_now_calls = 0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def target(self) -> str:
        return self._target

    @property
    def last(self) -> tuple[grpc.ChannelConnectivity, Picker]:
        """The latest (state, picker)."""
        return self.updates[-1]

    @property
    def picker(self) -> Picker:
        return self.updates[-1][1]

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        self.updates.append((state, picker))

    def schedule(self, delay: float, fn: Callable[[], None]) -> Cancellable:
        t = _Timer(fn)
        heapq.heappush(self._timers, (self._clock.monotonic() + max(0.0, delay), next(self._seq), t))
        return t

    def resolve_now(self) -> None:
        self.resolve_now_calls += 1

    def report_ejection(self, subconn: SubConn, ejected: bool) -> None:
        self.ejections.append((subconn.addr, ejected))

    def run_due(self) -> int:
        """Run every timer whose time has come on the clock (including ones they schedule
        for now). Returns how many ran."""
        ran = 0
        while self._timers and self._timers[0][0] <= self._clock.monotonic():
            _, _, t = heapq.heappop(self._timers)
            if not t.cancelled:
                t.fn()
                ran += 1
        return ran


def pick_all(picker: Picker, n: int, method: str = "/svc/M", metadata: Any = None) -> list[PickResult | None]:
    """``n`` picks from ``picker``."""
    return [picker.pick(method, metadata) for _ in range(n)]


def finish(result: PickResult | None, code: grpc.StatusCode = grpc.StatusCode.OK, latency: float = 0.001,
           trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
    """End the attempt ``result`` picked as the channel would: call its ``done`` once."""
    assert result is not None, "nothing was picked"
    if result.done is not None:
        result.done(DoneInfo(code, latency, tuple(trailing_metadata)))


def update(balancer: Balancer, subconns: Sequence[Any], config: Any = None) -> None:
    """Give ``balancer`` a new address set made of ``subconns``."""
    balancer.update_state(BalancerState(tuple(subconns), ResolverState(tuple(s.address for s in subconns)), config))
