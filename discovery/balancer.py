"""The balancer interface: builders keyed by policy name, balancers, pickers.

Modelled on grpc-go's ``balancer`` package. A :class:`Balancer` lives on the
channel's control thread: it is told the current backends whenever the address
set or any backend's state changes, asks idle backends to connect, and
publishes a :class:`Picker`, an immutable snapshot the data plane calls once
per RPC. ``Picker.pick`` never blocks and takes no lock.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import grpc

from .address import Address
from .clock import Clock

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "Balancer",
    "BalancerBuilder",
    "BalancerHelper",
    "ErrorPicker",
    "Metadata",
    "Picker",
    "QueuePicker",
    "SubConn",
    "aggregate_state",
    "describe_states",
]

Metadata = Sequence[tuple[str, str | bytes]]
Connectivity = grpc.ChannelConnectivity

# Statuses counted as a backend failure (outlier detection) unless a policy
# says otherwise: the ones that point at the backend rather than the request.
DEFAULT_FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})


class SubConn(Protocol):
    """A balancer's view of one backend (a grpc channel to one address).

    Attributes are read without locks; they may change between two reads.
    ``ejected`` is the one a policy writes (outlier detection), on the
    control thread. ``successes``/``failures`` count finished RPCs;
    :meth:`take_counts` reads and resets them.
    """

    address: Address
    state: grpc.ChannelConnectivity
    healthy: bool
    ejected: bool
    in_flight: int
    consecutive_failures: int

    def connect(self) -> None:
        """Ask an IDLE backend to start connecting. Never blocks."""
        ...

    def take_counts(self) -> tuple[int, int]:
        """(successes, failures) since the last call, resetting both. Thread-safe."""
        ...


class Picker(abc.ABC):
    """Chooses a backend for one RPC. Immutable; called from any thread.

    ``pick`` returns a backend, or None when nothing can be picked. Then
    ``queue`` says what the RPC does: True means the channel is still getting
    ready (the RPC waits for the next picker, as gRPC does while CONNECTING);
    False means fail now with UNAVAILABLE quoting ``reason`` (unless the call
    is ``wait_for_ready``).
    """

    __slots__ = ()
    queue: bool = False
    reason: str = ""

    @abc.abstractmethod
    def pick(self, method: str, metadata: Metadata | None) -> SubConn | None:
        """Pick a backend for ``method``. Never blocks, takes no lock."""


class QueuePicker(Picker):
    """Nothing ready yet but something is connecting: RPCs wait for a new picker."""

    __slots__ = ("reason",)
    queue = True

    def __init__(self, reason: str = "connecting") -> None:
        self.reason = reason

    def pick(self, method: str, metadata: Metadata | None) -> SubConn | None:
        return None


class ErrorPicker(Picker):
    """Nothing pickable: fail-fast RPCs fail with ``reason``."""

    __slots__ = ("reason",)
    queue = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def pick(self, method: str, metadata: Metadata | None) -> SubConn | None:
        return None


class BalancerHelper(Protocol):
    """What the channel offers a balancer. Call only from the control thread."""

    @property
    def clock(self) -> Clock:
        """The channel's clock (injected in tests)."""
        ...

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        """Publish a new picker and the channel's aggregate connectivity."""
        ...

    def schedule(self, delay: float, fn: Callable[[], None]) -> Any:
        """Run ``fn`` on the control thread after ``delay`` seconds; returns a cancellable timer."""
        ...

    def rebalance(self) -> None:
        """Call the balancer's ``update`` again with the current backends, soon."""
        ...

    def track_outcomes(self, failure_codes: frozenset[grpc.StatusCode], consecutive_limit: int,
                       on_limit: Callable[[SubConn], None] | None) -> None:
        """Count ``failure_codes`` as backend failures; call ``on_limit(b)`` (control
        thread) when ``b`` fails ``consecutive_limit`` RPCs in a row."""
        ...


class Balancer(abc.ABC):
    """One per channel; every method is called on the channel's control thread."""

    @abc.abstractmethod
    def update(self, backends: Sequence[SubConn]) -> None:
        """The current backends (resolver order) after any change; publish a picker."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release anything the balancer holds."""


class BalancerBuilder(abc.ABC):
    """Builds balancers for one policy name (entry-point group ``discovery.balancers``)."""

    name: ClassVar[str] = ""

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> Any:
        """Validate this policy's JSON config; raise ConfigError naming ``key_path``.

        The default accepts only an empty object.
        """
        if config:
            from .errors import ConfigError

            raise ConfigError(
                f"policy {self.name!r} takes no options, got {sorted(config)}", key_path=key_path
            )
        return None

    @abc.abstractmethod
    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        """A new balancer using ``config`` as returned by :meth:`parse_config`."""


def aggregate_state(states: Sequence[grpc.ChannelConnectivity]) -> grpc.ChannelConnectivity:
    """gRPC's aggregation rule: READY > CONNECTING > IDLE > TRANSIENT_FAILURE."""
    seen = set(states)
    for s in (Connectivity.READY, Connectivity.CONNECTING, Connectivity.IDLE):
        if s in seen:
            return s
    return Connectivity.TRANSIENT_FAILURE


def describe_states(backends: Sequence[SubConn]) -> str:
    """``"0 of 3 backends ready (2 TRANSIENT_FAILURE, 1 IDLE)"``, for error messages."""
    if not backends:
        return "no addresses"
    counts = Counter(b.state.name for b in backends)
    ready = counts.pop("READY", 0)
    rest = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    return f"{ready} of {len(backends)} backends ready" + (f" ({rest})" if rest else "")
