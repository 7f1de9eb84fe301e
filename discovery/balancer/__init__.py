"""The balancer interface: builders keyed by policy name, balancers, pickers, per-RPC results.

Modelled on grpc-go's ``balancer`` package. A :class:`Balancer` lives on the
channel's control thread. It is told each new address set
(:meth:`Balancer.update_state`), each resolver error and each backend's state
change, in separate callbacks; it asks idle backends to connect and publishes
a :class:`Picker`, an immutable snapshot the data plane calls once per RPC.

``Picker.pick`` never blocks and takes no lock. It returns a
:class:`PickResult`: the backend, plus an optional ``done`` callback the data
plane calls exactly once per pick it obtained, with a :class:`DoneInfo`
(status code, latency, trailing metadata; :data:`NOT_ATTEMPTED` for a pick
it did not use). A picker may also raise :class:`Drop` to fail the RPC at
once without any backend. This is how
policies learn about individual RPCs (grpc-go's ``PickResult.Done``): a
policy that gives no ``done`` pays nothing for it.

Policies compose. A parent (``outlier_detection``, ...) builds its child
with :func:`build_child` and a helper it wraps (:class:`DelegatingHelper`),
so it sees the child's pickers and can wrap them and their ``done``
callbacks; it shows the child its own views of the backends
(:class:`SubConnView`). Policy state lives in the policy, never on the
backend. For the common case, :mod:`discovery.balancer.base` asks a policy
only for a picker over the usable backends.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import grpc

from ..address import Address, ResolverState
from ..clock import Clock

if TYPE_CHECKING:
    from ..backend import Backend

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "NOT_ATTEMPTED",
    "Balancer",
    "BalancerBuilder",
    "BalancerHelper",
    "BalancerState",
    "Cancellable",
    "DelegatingHelper",
    "DoneInfo",
    "Drop",
    "ErrorPicker",
    "Metadata",
    "PickResult",
    "Picker",
    "QueuePicker",
    "StreamHandle",
    "SubConn",
    "SubConnView",
    "aggregate_state",
    "build_child",
    "describe_states",
    "usable",
]

Metadata = Sequence[tuple[str, str | bytes]]
Connectivity = grpc.ChannelConnectivity
_READY = Connectivity.READY

# Statuses counted as a backend failure (outlier detection) unless a policy
# says otherwise: the ones that point at the backend rather than the request.
DEFAULT_FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})


class SubConn(Protocol):
    """A balancer's read-only view of one backend (a grpc channel to one address).

    ``state`` is the backend channel's connectivity; ``healthy`` is False while
    the backend fails its health check or a parent policy (outlier detection)
    keeps it out. A backend is *usable* when it is READY and healthy
    (:func:`usable`); pickers return only usable backends, except in Envoy's
    panic mode. ``backend`` is the channel's own object behind any number of
    views: the data plane sends the RPC there. Attributes are read without
    locks on the control thread; they change only between callbacks.
    """

    @property
    def address(self) -> Address: ...

    @property
    def addr(self) -> str: ...

    @property
    def state(self) -> grpc.ChannelConnectivity: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def last_error(self) -> str: ...

    @property
    def backend(self) -> Backend: ...

    def connect(self) -> None:
        """Ask an IDLE backend to start connecting. Never blocks."""
        ...


def usable(sc: SubConn) -> bool:
    """READY and healthy: what a picker may return outside panic mode."""
    return sc.state is _READY and sc.healthy


@dataclass(frozen=True, slots=True)
class DoneInfo:
    """How one attempt that went to a picked backend ended.

    ``code`` is the attempt's status (OK on success). ``latency`` is seconds
    from the pick to the attempt's end. ``trailing_metadata`` is a tuple of
    (key, value), empty when the call shape cannot see it. ``attempted`` is
    False for a pick the channel did not use (see :data:`NOT_ATTEMPTED`).
    """

    code: grpc.StatusCode
    latency: float
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    attempted: bool = True


# What ``done`` gets for a pick the channel obtained but never sent an attempt
# with: a re-pick that avoided an already tried backend, a backend closed
# under the RPC, a parent policy that discarded its child's pick. Like
# grpc-go's Done with an empty DoneInfo: a policy that reserved something at
# pick time (an in-flight slot) releases it, and records no outcome.
NOT_ATTEMPTED = DoneInfo(grpc.StatusCode.CANCELLED, 0.0, (), attempted=False)


class Drop(Exception):
    """Raised by :meth:`Picker.pick` to fail this RPC at once, without any backend.

    grpc-go's drop error: the RPC fails with ``code`` (UNAVAILABLE by
    default) and ``details``, even a ``wait_for_ready`` one, and is neither
    retried nor re-picked. No ``done`` is called, since no backend was
    involved, so a drop never counts against a backend (outlier detection).
    A parent policy's picker lets it propagate. Used by ``circuit_breaker``.
    """

    def __init__(self, details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(details)
        self.details = details
        self.code = code


@dataclass(frozen=True, slots=True)
class PickResult:
    """A picker's answer: the backend, and what to call when the attempt ends.

    ``done`` is called exactly once for every pick the channel obtains, on
    any thread: after the attempt sent to ``subconn`` has ended, or with
    :data:`NOT_ATTEMPTED` when the channel did not use the pick. So a policy
    may reserve something when it picks (an in-flight slot) and release it
    in ``done``. It must not block or raise (an exception is logged and
    dropped).
    """

    subconn: SubConn
    done: Callable[[DoneInfo], None] | None = None


class Picker(abc.ABC):
    """Chooses a backend for one RPC. Immutable; called from any thread.

    ``pick`` returns a :class:`PickResult`, or None when nothing can be
    picked. Then ``queue`` says what the RPC does: True means the channel is
    still getting ready (the RPC waits for the next picker, as gRPC does
    while CONNECTING); False means fail now with UNAVAILABLE quoting
    ``reason`` (unless the call is ``wait_for_ready``).
    """

    __slots__ = ()
    queue: bool = False
    reason: str = ""

    @abc.abstractmethod
    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        """Pick a backend for ``method``; may raise :class:`Drop`.

        Never blocks. Takes no lock, except a lock held for a few instructions
        where a policy must count atomically (Python has no atomic integers):
        least_request and peak_ewma count in-flight RPCs, circuit_breaker
        reserves its slots.
        """

    def why_none(self, method: str, metadata: Metadata | None) -> tuple[bool, str]:
        """``(queue, reason)`` for an RPC ``pick`` just found nothing for.

        The default is the picker's own :attr:`queue` and :attr:`reason`. A
        picker that routes by request (a subset per header value, a tier per
        pick) overrides it, so that an RPC waits or fails by the state of the
        part it was routed to and its UNAVAILABLE says what it asked for. A
        picker that wraps another forwards this call. Never blocks.
        """
        return self.queue, self.reason


class QueuePicker(Picker):
    """Nothing ready yet but something is connecting: RPCs wait for a new picker."""

    __slots__ = ("reason",)
    queue = True

    def __init__(self, reason: str = "connecting") -> None:
        self.reason = reason

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return None


class ErrorPicker(Picker):
    """Nothing pickable: fail-fast RPCs fail with ``reason``."""

    __slots__ = ("reason",)
    queue = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return None


class Cancellable(Protocol):
    """A scheduled callback (:meth:`BalancerHelper.schedule`)."""

    def cancel(self) -> None: ...


class StreamHandle(Protocol):
    """A stream opened by :meth:`BalancerHelper.open_stream`; ``cancel()`` ends it (any thread)."""

    def cancel(self) -> None: ...


class BalancerHelper(Protocol):
    """What the channel offers a balancer. Call only from the control thread."""

    @property
    def clock(self) -> Clock:
        """The channel's clock (injected in tests); :meth:`schedule` runs on it."""
        ...

    @property
    def target(self) -> str:
        """The channel's target, for log messages."""
        ...

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        """Publish a new picker and the balancer's aggregate connectivity."""
        ...

    def schedule(self, delay: float, fn: Callable[[], None]) -> Cancellable:
        """Run ``fn`` on the control thread after ``delay`` seconds of :attr:`clock`."""
        ...

    def resolve_now(self) -> None:
        """Ask the resolver for a fresh lookup (rate-limited by the resolver)."""
        ...

    def report_ejection(self, subconn: SubConn, ejected: bool) -> None:
        """Tell the channel a policy took ``subconn`` out of (or back into) rotation.

        Shown as ``ejected`` in :meth:`discovery.Channel.backends`; nothing else.
        """
        ...

    def open_stream(self, subconn: SubConn, method: str, request: bytes,
                    on_message: Callable[[bytes], None],
                    on_end: Callable[[grpc.StatusCode, str], None]) -> StreamHandle:
        """Start a server-streaming RPC ``method`` to ``subconn``'s backend alone.

        For a policy's own out-of-band traffic (ORCA load reports): it goes
        to that backend (not through the picker), is not an RPC of the
        channel (no ``done``, no in-flight count) and uses no thread of its
        own. ``request`` and the messages are serialized bytes. ``on_message``
        and then ``on_end(code, details)`` (once) run on the control thread;
        after ``cancel()`` neither is called any more. Never blocks.
        """
        ...


@dataclass(frozen=True, slots=True)
class BalancerState:
    """A new address set for a balancer: one subconn per address, in resolver order.

    ``resolver_state`` is what the resolver published (attributes, note);
    ``config`` is this policy's parsed config.
    """

    subconns: tuple[SubConn, ...]
    resolver_state: ResolverState = field(default_factory=lambda: ResolverState(()))
    config: Any = None


class Balancer(abc.ABC):
    """One per channel (or per parent); every method runs on the channel's control thread."""

    @abc.abstractmethod
    def update_state(self, state: BalancerState) -> None:
        """A new address set (or the first); publish a picker."""

    @abc.abstractmethod
    def subconn_state(self, subconn: SubConn) -> None:
        """``subconn``'s connectivity or health changed (read its attributes)."""

    def resolver_error(self, error: Exception) -> None:  # noqa: B027 - optional hook
        """The resolver failed; the last address set stays. Default: nothing to do."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release anything the balancer holds (timers, children)."""


class BalancerBuilder(abc.ABC):
    """Builds balancers for one policy name (entry-point group ``discovery.balancers``)."""

    name: ClassVar[str] = ""

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> Any:
        """Validate this policy's JSON config; raise ConfigError naming ``key_path``.

        The default accepts only an empty object.
        """
        if config:
            from ..errors import ConfigError

            raise ConfigError(
                f"policy {self.name!r} takes no options, got {sorted(map(str, config))}", key_path=key_path
            )
        return None

    @abc.abstractmethod
    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        """A new balancer using ``config`` as returned by :meth:`parse_config`."""


# -- composition ----------------------------------------------------------------


class DelegatingHelper:
    """A helper that forwards everything to ``parent``; a parent policy subclasses it
    (usually overriding :meth:`update_picker`) and hands it to its child."""

    def __init__(self, parent: BalancerHelper) -> None:
        self.parent = parent

    @property
    def clock(self) -> Clock:
        return self.parent.clock

    @property
    def target(self) -> str:
        return self.parent.target

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        self.parent.update_picker(state, picker)

    def schedule(self, delay: float, fn: Callable[[], None]) -> Cancellable:
        return self.parent.schedule(delay, fn)

    def resolve_now(self) -> None:
        self.parent.resolve_now()

    def report_ejection(self, subconn: SubConn, ejected: bool) -> None:
        self.parent.report_ejection(subconn, ejected)

    def open_stream(self, subconn: SubConn, method: str, request: bytes,
                    on_message: Callable[[bytes], None],
                    on_end: Callable[[grpc.StatusCode, str], None]) -> StreamHandle:
        return self.parent.open_stream(subconn, method, request, on_message, on_end)


class SubConnView:
    """A parent policy's view of a subconn for its child: same backend, with
    ``healthy`` forced False while :attr:`excluded` is set (how outlier
    detection hides an ejected backend from any child, with no cooperation
    from it). Everything else reads through to ``inner``."""

    __slots__ = ("backend", "excluded", "inner")

    def __init__(self, inner: SubConn) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.excluded = False

    @property
    def address(self) -> Address:
        return self.inner.address

    @property
    def addr(self) -> str:
        return self.inner.addr

    @property
    def state(self) -> grpc.ChannelConnectivity:
        return self.inner.state

    @property
    def healthy(self) -> bool:
        return self.inner.healthy and not self.excluded

    @property
    def last_error(self) -> str:
        return self.inner.last_error

    def connect(self) -> None:
        self.inner.connect()

    def __repr__(self) -> str:
        return f"<SubConnView {self.addr}{' excluded' if self.excluded else ''}>"


def build_child(helper: BalancerHelper, policy: str, config: Any) -> Balancer:
    """Build the registered policy ``policy`` (third-party ones included) under ``helper``."""
    from ..registry import get_balancer

    return get_balancer(policy).build(helper, config)


# -- shared wording ---------------------------------------------------------------


def aggregate_state(states: Sequence[grpc.ChannelConnectivity]) -> grpc.ChannelConnectivity:
    """gRPC's aggregation rule: READY > CONNECTING > IDLE > TRANSIENT_FAILURE."""
    seen = set(states)
    for s in (Connectivity.READY, Connectivity.CONNECTING, Connectivity.IDLE):
        if s in seen:
            return s
    return Connectivity.TRANSIENT_FAILURE


def describe_states(subconns: Sequence[SubConn]) -> str:
    """``"0 of 3 backends ready (2 TRANSIENT_FAILURE, 1 IDLE); last connection error: ..."``.

    For error messages: a user reading an UNAVAILABLE needs to know what the
    backends are doing and the last thing that went wrong connecting to one.
    """
    if not subconns:
        return "no addresses"
    counts = Counter(
        "unhealthy" if sc.state is _READY and not sc.healthy else sc.state.name for sc in subconns
    )
    ready = counts.pop("READY", 0)
    rest = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    out = f"{ready} of {len(subconns)} backends ready" + (f" ({rest})" if rest else "")
    errors = [f"{sc.addr}: {sc.last_error}" for sc in subconns if sc.last_error and not usable(sc)]
    if errors:
        out += f"; last connection error: {errors[-1]}"
    return out
