"""One backend: a grpc channel to one address, its connectivity and its in-flight RPCs.

A :class:`Backend` is created and closed only by the subchannel manager on the
control thread. The data plane touches it through :meth:`begin`/:meth:`end`
(in-flight accounting, a short uncontended lock) and :attr:`callables` (a
cache of the backend channel's multicallables, so an RPC does not build one).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from ._futures import AioTwin, shared_loop
from ._grpc_compat import state_reader
from .address import Address

__all__ = ["Backend", "BackendSnapshot"]

_C = grpc.ChannelConnectivity

# What a multicallable is cached under: (kind, method, serializer,
# deserializer, registered). Serializers are part of the key because two stubs
# may use the same method name with different message classes.
CallableKey = tuple[str, str, Any, Any, bool]


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """What :meth:`discovery.Channel.backends` reports for one backend (immutable)."""

    address: str
    state: grpc.ChannelConnectivity
    healthy: bool
    ejected: bool
    in_flight: int
    weight: int = 1

    def __repr__(self) -> str:
        flags = "" if self.healthy else " unhealthy"
        flags += " ejected" if self.ejected else ""
        return f"<Backend {self.address} {self.state.name}{flags} in_flight={self.in_flight}>"


class Backend:
    """A grpc channel to one address plus the state balancers read.

    ``state``, ``healthy`` and ``ejected`` are written only on the control
    thread and read anywhere without locks (single attribute reads are atomic).
    """

    __slots__ = (
        "__weakref__",
        "_lock",
        "_make_aio",
        "_on_idle",
        "_read_state",
        "addr",
        "address",
        "aio_twins",
        "callables",
        "channel",
        "closing",
        "connect_requested",
        "consecutive_failures",
        "consecutive_limit",
        "ejected",
        "failures",
        "health_checked",
        "healthy",
        "in_flight",
        "last_error",
        "on_consecutive",
        "state",
        "successes",
    )

    def __init__(self, address: Address, channel: grpc.Channel,
                 make_aio: Callable[[], grpc.aio.Channel] | None = None) -> None:
        self.address = address
        self.addr = address.addr
        self.channel = channel
        self._read_state = state_reader(channel)
        self.state: grpc.ChannelConnectivity = _C.IDLE
        self.healthy = True
        self.ejected = False
        self.in_flight = 0
        self.last_error = ""
        self.closing = False
        self.connect_requested = False
        # Outcome counters for outlier detection; written under _lock by end().
        self.successes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.consecutive_limit = 0
        self.on_consecutive: Callable[[Backend], None] | None = None
        self.health_checked = False
        self.callables: dict[CallableKey, Any] = {}
        self._lock = threading.Lock()
        self._on_idle: Callable[[Backend], None] | None = None
        # grpc.aio twin channels, one per event loop that sent RPCs here: the
        # shared futures loop (discovery._futures) and, for discovery.aio,
        # the application's loop. Each is made on first use, on its loop.
        self._make_aio = make_aio
        self.aio_twins: dict[asyncio.AbstractEventLoop, AioTwin] = {}

    # -- data plane -------------------------------------------------------

    def callable(self, key: CallableKey) -> Any:
        """The backend channel's multicallable for ``key``, built once."""
        mc = self.callables.get(key)
        if mc is None:
            kind, method, ser, deser, registered = key
            factory = getattr(self.channel, kind)
            mc = factory(method, ser, deser, _registered_method=registered)
            self.callables[key] = mc
        return mc

    def begin(self) -> None:
        """An RPC was started on this backend."""
        with self._lock:
            self.in_flight += 1

    def end(self, failed: bool = False) -> None:
        """An RPC on this backend ended; ``failed`` if its status counts as a failure."""
        with self._lock:
            self.in_flight -= 1
            drained = self.closing and self.in_flight == 0
            if failed:
                self.failures += 1
                self.consecutive_failures += 1
                hit = self.consecutive_failures == self.consecutive_limit
            else:
                self.successes += 1
                self.consecutive_failures = 0
                hit = False
        if hit and self.on_consecutive is not None:
            self.on_consecutive(self)
        if drained and self._on_idle is not None:
            self._on_idle(self)

    def take_counts(self) -> tuple[int, int]:
        """(successes, failures) since the last call, resetting both. Any thread."""
        with self._lock:
            out = (self.successes, self.failures)
            self.successes = self.failures = 0
            return out

    # -- control plane ----------------------------------------------------

    def connect(self) -> None:
        """Ask an IDLE channel to connect. Non-blocking."""
        self.connect_requested = True
        self._read_state(True)

    def poll(self) -> bool:
        """Re-read connectivity; True if it changed. Non-blocking."""
        new = self._read_state(False)
        if new is not _C.IDLE:
            self.connect_requested = False
        if new is self.state:
            return False
        self.state = new
        # grpcio's core runs the gRFC A17 health check and reports a backend
        # that is not SERVING as TRANSIENT_FAILURE; with checking on, that is
        # the only signal there is (see README, "Health checking").
        self.healthy = not (self.health_checked and new is _C.TRANSIENT_FAILURE)
        return True

    def start_drain(self, on_idle: Callable[[Backend], None]) -> bool:
        """Stop taking part; call ``on_idle`` once in-flight RPCs reach zero.

        Returns True if the backend is already idle (no callback will come).
        """
        with self._lock:
            self.closing = True
            self._on_idle = on_idle
            return self.in_flight == 0

    def twin(self) -> AioTwin:
        """The twin on the shared futures loop. That loop's thread only."""
        return self.twin_for(shared_loop().loop)

    def twin_for(self, loop: asyncio.AbstractEventLoop) -> AioTwin:
        """The backend's grpc.aio twin channel for ``loop``, made on first use. ``loop``'s thread only."""
        twin = self.aio_twins.get(loop)
        if twin is None:
            if self._make_aio is None:
                raise RuntimeError(f"backend {self.addr} has no grpc.aio channel factory")
            twin = self.aio_twins[loop] = AioTwin(self._make_aio())
        return twin

    def close(self) -> None:
        """Close the channel and its aio twins (cancels anything still in flight)."""
        self._on_idle = None
        self.channel.close()
        for loop, twin in list(self.aio_twins.items()):
            # A twin's channel belongs to its loop: close it there. A loop
            # that has already stopped took its channels with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(twin.close)
        self.aio_twins.clear()

    def snapshot(self) -> BackendSnapshot:
        return BackendSnapshot(self.addr, self.state, self.healthy, self.ejected, self.in_flight,
                               self.address.weight)

    def __repr__(self) -> str:
        return f"<Backend {self.addr} {self.state.name}>"
