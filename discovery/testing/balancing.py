"""Fakes for testing balancing policies without a channel: subconns and a helper.

A policy under test gets a :class:`FakeHelper` (it records every picker,
runs timers on a :class:`~discovery.testing.FakeClock` when the test says
so, and records ejections) and :class:`FakeSubConn` backends whose state the
test sets by hand before calling ``subconn_state``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..address import Address, ResolverState
from ..balancer import Balancer, BalancerState, Cancellable, DoneInfo, Picker, PickResult, SubConn
from ..clock import Clock

__all__ = [
    "FakeHelper",
    "FakeStream",
    "FakeSubConn",
    "check_distribution",
    "chi_square",
    "chi_square_critical",
    "finish",
    "pick_all",
    "update",
]


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


class FakeStream:
    """A stream a policy opened through :meth:`FakeHelper.open_stream`; the test plays the server.

    ``send(msg)`` delivers one serialized message, ``end(code)`` ends the
    stream; both call the policy's callbacks at once (the test's thread
    stands in for the control thread) unless the policy cancelled it.
    """

    def __init__(self, subconn: SubConn, method: str, request: bytes, on_message: Callable[[bytes], None],
                 on_end: Callable[[grpc.StatusCode, str], None]) -> None:
        self.subconn = subconn
        self.method = method
        self.request = request
        self._on_message = on_message
        self._on_end = on_end
        self.cancelled = False
        self.ended = False

    def send(self, message: bytes) -> None:
        if not (self.cancelled or self.ended):
            self._on_message(message)

    def end(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, details: str = "") -> None:
        if not (self.cancelled or self.ended):
            self.ended = True
            self._on_end(code, details)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def open(self) -> bool:
        return not (self.cancelled or self.ended)

    def __repr__(self) -> str:
        return f"<FakeStream {self.method} to {self.subconn.addr}{' open' if self.open else ''}>"


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
        self.streams: list[FakeStream] = []
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

    def open_stream(self, subconn: SubConn, method: str, request: bytes, on_message: Callable[[bytes], None],
                    on_end: Callable[[grpc.StatusCode, str], None]) -> FakeStream:
        """Record the stream in :attr:`streams`; the test sends messages through it."""
        st = FakeStream(subconn, method, request, on_message, on_end)
        self.streams.append(st)
        return st

    def open_streams(self, method: str | None = None) -> dict[str, FakeStream]:
        """The streams still open, by backend address (the latest one per address)."""
        return {st.subconn.addr: st for st in self.streams if st.open and (method is None or st.method == method)}

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


def chi_square(counts: Sequence[int], weights: Sequence[float]) -> float:
    """Pearson's statistic of observed ``counts`` against shares proportional to ``weights``."""
    if len(counts) != len(weights) or not counts:
        raise ValueError("one weight per count, at least one")
    total, wsum = sum(counts), float(sum(weights))
    return sum((c - total * w / wsum) ** 2 / (total * w / wsum) for c, w in zip(counts, weights, strict=True))


def chi_square_critical(df: int, z: float = 3.0902) -> float:
    """The chi-square value a fit exceeds with probability 0.001 (``z`` = 3.0902), for ``df`` degrees.

    Tabulated up to 10 degrees; beyond, the Wilson-Hilferty approximation
    (within 1 % of the exact quantile there): no statistics package needed.
    """
    if df < 1:
        raise ValueError("df must be >= 1")
    exact = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124, 9: 27.877,
             10: 29.588}
    if df in exact:
        return exact[df]
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def check_distribution(counts: Sequence[int], weights: Sequence[float], what: str = "picks") -> float:
    """Assert that ``counts`` fit ``weights`` (chi-square at p = 0.001, like grpc-go's weighted checks).

    Returns the statistic. Use enough picks that every expected count is at
    least 5 (the test's validity condition), which this checks too.
    """
    total, wsum = sum(counts), float(sum(weights))
    low = min(total * w / wsum for w in weights)
    if low < 5:
        raise AssertionError(f"too few {what} for a chi-square test: an expected count is {low:.1f} (< 5)")
    stat = chi_square(counts, weights)
    crit = chi_square_critical(len(counts) - 1)
    if stat > crit:
        expected = [round(total * w / wsum, 1) for w in weights]
        raise AssertionError(f"{what} {list(counts)} do not fit the expected {expected}: "
                             f"chi-square {stat:.1f} > {crit:.1f} (df {len(counts) - 1}, p 0.001)")
    return stat
