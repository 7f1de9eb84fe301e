"""One backend: a grpc channel to one address, its connectivity and its in-flight RPCs.

A :class:`Backend` is created and closed only by the subchannel manager on the
control thread. The data plane touches it through :meth:`Backend.begin` /
:meth:`Backend.end` (in-flight accounting without a lock, see below) and its
multicallable caches.

A backend of a sync :class:`discovery.Channel` has a sync grpc channel, plus
a grpc.aio twin on the shared futures loop made on first use (``.future()``
calls and hedged calls run there, see :mod:`discovery._futures`). A backend of
a :class:`discovery.aio.Channel` has ONE grpc.aio channel, made on the
application's event loop: no sync twin, so health checking runs once.

:meth:`begin` refuses a closed backend, so an RPC that picked a backend from
an older picker while the manager closed it is re-picked instead of failing
with grpc's "closed channel" error.

The in-flight count is the length of a list of tokens: ``list.append`` and
``list.pop`` are each atomic, and every RPC attempt pays for two of them and
no lock. Refusing a closed backend then needs no lock either, because each
side writes before it reads: :meth:`Backend.begin` adds its token and then
reads ``closed``; :meth:`Backend.try_close_idle` sets ``closed`` and then
counts the tokens (and takes ``closed`` back if there are any). Whichever
goes second sees the other's write, so either the RPC is refused (and
re-picks) or the backend stays open for it, never both and never neither.
The same order makes :meth:`Backend.end` and :meth:`Backend.start_drain`
agree on who saw the count reach zero (both may; the manager's close is
idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio

from ._futures import AioTwin
from ._grpc_compat import aio_state_reader, state_reader
from .address import Address

__all__ = ["Backend", "BackendSnapshot", "CallableKey", "forget_closed"]

_C = grpc.ChannelConnectivity

# What a multicallable is cached under: (kind, method, serializer,
# deserializer, registered). Serializers are part of the key because two stubs
# may use the same method name with different message classes.
CallableKey = tuple[str, str, Any, Any, bool]

# The method :meth:`Backend.probe_error` calls: no server implements it.
_PROBE = "/grpc.discovery.v1.Probe/LastConnectionError"


_PROBES: set[asyncio.Future[None]] = set()


def _ident(b: bytes) -> bytes:
    return b


def forget_closed(cache: dict[Backend, Any]) -> None:
    """Drop closed backends from a per-backend cache of the data plane. Any thread.

    Called when a backend is added to ``cache``: removed backends leave when a
    new one comes, so the cache holds at most the live backends plus those
    removed since the last addition. ``list(cache)`` copies without running
    Python code, so other threads may read and add meanwhile.
    """
    for old in list(cache):
        if old.closed:
            cache.pop(old, None)


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """What :meth:`discovery.Channel.backends` reports for one backend (immutable)."""

    address: str
    state: grpc.ChannelConnectivity
    healthy: bool
    ejected: bool
    in_flight: int
    weight: int = 1
    priority: int = 0
    zone: str = ""
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        extra = f" zone={self.zone}" if self.zone else ""
        extra += f" priority={self.priority}" if self.priority else ""
        return (f"<Backend {self.address} {self.state.name} healthy={self.healthy} ejected={self.ejected} "
                f"weight={self.weight}{extra} in_flight={self.in_flight}>")


class Backend:
    """A grpc channel to one address plus the state balancers read (a :class:`SubConn`).

    ``state``, ``healthy`` and ``ejected`` are written only on the control
    thread and read anywhere without locks (single attribute reads are atomic).
    ``shown`` is what :meth:`snapshot` reports of them and of ``address``:
    the channel copies them there with :meth:`show` only once the balancer
    has acted on them.
    """

    __slots__ = (
        "__weakref__",
        "_make_aio",
        "_on_idle",
        "_primary_loop",
        "_read_state",
        "addr",
        "address",
        "aio_twins",
        "backend",
        "callables",
        "channel",
        "closed",
        "closing",
        "connect_requested",
        "ejected",
        "health_checked",
        "healthy",
        "last_error",
        "shown",
        "state",
        "tokens",
    )

    def __init__(self, address: Address, channel: grpc.Channel | None,
                 make_aio: Callable[[], grpc.aio.Channel] | None = None, *,
                 aio_loop: asyncio.AbstractEventLoop | None = None, health_checked: bool = False) -> None:
        self.address = address
        self.addr = address.addr
        # The backend itself, as views of it made by parent policies name it:
        # an attribute, not a property, because every RPC reads it.
        self.backend = self
        self.channel = channel
        self.state: grpc.ChannelConnectivity = _C.IDLE
        self.healthy = True
        self.health_checked = health_checked
        self.ejected = False
        self.shown: tuple[Address, grpc.ChannelConnectivity, bool, bool] = (address, _C.IDLE, True, False)
        # One entry per attempt in flight (see the module docstring).
        self.tokens: list[None] = []
        self.last_error = ""
        self.closing = False
        self.closed = False
        self.connect_requested = False
        self.callables: dict[CallableKey, Any] = {}
        self._on_idle: Callable[[Backend], None] | None = None
        # grpc.aio channels, one per event loop that sends RPCs here, each
        # made on its own loop: for a sync channel, the shared futures loop's
        # twin; for an asyncio channel, the one channel on the app's loop.
        self._make_aio = make_aio
        self.aio_twins: dict[asyncio.AbstractEventLoop, AioTwin] = {}
        self._primary_loop = aio_loop
        self._read_state: Callable[[bool], grpc.ChannelConnectivity] | None = None
        if channel is not None:
            self._read_state = state_reader(channel)
        elif aio_loop is not None:
            # The aio channel must be made on its loop; until then the backend is IDLE.
            aio_loop.call_soon_threadsafe(self._open_primary)

    # -- data plane -------------------------------------------------------

    def callable(self, key: CallableKey) -> Any:
        """The sync backend channel's multicallable for ``key``, built once."""
        mc = self.callables.get(key)
        if mc is None:
            assert self.channel is not None
            kind, method, ser, deser, registered = key
            mc = getattr(self.channel, kind)(method, ser, deser, _registered_method=registered)
            self.callables[key] = mc
        return mc

    def begin(self) -> bool:
        """Count an RPC attempt starting here; False if the backend is already closed. Any thread.

        The asyncio hot path (:class:`discovery.calls.aio.UnaryStart`) writes
        this and :meth:`end` out, in the same order.
        """
        self.tokens.append(None)
        if self.closed:
            # Refused: the token goes as an ended attempt's does, idle check
            # included. try_close_idle may have seen it and backed off, so
            # this may be the last word on a draining backend.
            self.end()
            return False
        return True

    def end(self) -> None:
        """An attempt that :meth:`begin` counted has ended. Any thread."""
        self.tokens.pop()
        if self.closing:
            self.check_idle()

    def check_idle(self) -> None:
        """After an attempt ended on a closing backend: report it idle if nothing is in flight."""
        if not self.tokens:
            on_idle = self._on_idle
            if on_idle is not None:
                on_idle(self)

    @property
    def in_flight(self) -> int:
        """RPC attempts in flight here."""
        return len(self.tokens)

    def twin_for(self, loop: asyncio.AbstractEventLoop) -> AioTwin:
        """The backend's grpc.aio channel for ``loop``, made on first use. ``loop``'s thread only."""
        twin = self.aio_twins.get(loop)
        if twin is None:
            if self._make_aio is None:
                raise RuntimeError(f"backend {self.addr} has no grpc.aio channel factory")
            twin = self.aio_twins[loop] = AioTwin(self._make_aio())
        return twin

    # -- control plane ----------------------------------------------------

    def _open_primary(self) -> None:
        # On the app's loop: make the one aio channel, unless closed meanwhile.
        if self.closed or self._primary_loop is None:
            return
        twin = self.twin_for(self._primary_loop)
        self._read_state = aio_state_reader(twin.channel)
        if self.connect_requested:
            self._read_state(True)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give an asyncio channel's backend its event loop (learned at the first RPC)."""
        if self._primary_loop is None and self.channel is None:
            self._primary_loop = loop
            loop.call_soon_threadsafe(self._open_primary)

    def connect(self) -> None:
        """Ask an IDLE channel to connect. Non-blocking."""
        self.connect_requested = True
        if self._read_state is not None:
            self._read_state(True)

    def poll(self) -> bool:
        """Re-read connectivity; True if it changed. Non-blocking."""
        if self._read_state is None:
            return False
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

    def probe_error(self) -> None:
        """Learn why a backend in TRANSIENT_FAILURE cannot connect (``last_error``).

        grpcio exposes a channel's connection error only in the status of an
        RPC it fails, so this asks for one: an RPC to a method no server has,
        which a channel in TRANSIENT_FAILURE fails at once, locally, with
        UNAVAILABLE and the last connection error (``Connection refused``
        ...). Bounded by a 50 ms deadline should the channel have started
        connecting meanwhile; a server that is reached answers UNIMPLEMENTED,
        which is ignored. Control thread (sync backends) or the backend's loop
        (asyncio backends).
        """
        if self.closed:
            return
        if self.channel is not None:
            try:
                self.channel.unary_unary(_PROBE, _ident, _ident)(b"", timeout=0.05)
            except grpc.RpcError as exc:
                self._probed(exc.code(), exc.details())
            return
        loop = self._primary_loop
        twin = None if loop is None else self.aio_twins.get(loop)
        if loop is None or twin is None:
            return
        channel = twin.channel

        async def probe() -> None:
            try:
                await channel.unary_unary(_PROBE, _ident, _ident)(b"", timeout=0.05)
            except grpc.aio.AioRpcError as exc:
                self._probed(exc.code(), exc.details())

        def start() -> None:
            if not self.closed:
                # Held until done: asyncio keeps only weak references to tasks.
                task = asyncio.ensure_future(probe())
                _PROBES.add(task)
                task.add_done_callback(_PROBES.discard)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to learn
            loop.call_soon_threadsafe(start)

    def _probed(self, code: grpc.StatusCode, details: str | None) -> None:
        if code is grpc.StatusCode.UNAVAILABLE and details:
            self.last_error = details

    def start_drain(self, on_idle: Callable[[Backend], None]) -> bool:
        """Stop taking part; call ``on_idle`` once in-flight RPCs reach zero.

        Returns True if the backend is already idle (the callback may come too:
        the caller's close must be idempotent).
        """
        self._on_idle = on_idle
        self.closing = True
        return not self.tokens

    def try_close_idle(self) -> bool:
        """Close at once if nothing is in flight; atomically with :meth:`begin`. Control thread."""
        self.closed = True
        if self.tokens:
            # An RPC got in first: it is waited for. A begin() that saw the
            # moment's True was refused and re-picks, which is harmless.
            self.closed = False
            return False
        self._close_channels()
        return True

    def close(self) -> None:
        """Close the channel and its aio twins (cancels anything still in flight)."""
        self.closed = True
        self._close_channels()

    def _close_channels(self) -> None:
        self._on_idle = None
        if self.channel is not None:
            self.channel.close()
        for loop, twin in list(self.aio_twins.items()):
            # A twin's channel belongs to its loop: close it there. A loop
            # that has already stopped took its channels with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(twin.close)
        self.aio_twins.clear()

    def show(self) -> None:
        """Let :meth:`snapshot` report the current address, state, health and ejection. Control thread.

        The channel calls this after the balancer has seen a change and
        published its picker, never before: a snapshot that says a backend
        left READY must mean that new picks no longer return it, and one that
        says READY that they may (see ``ChannelCore.publish_view``).
        """
        self.shown = (self.address, self.state, self.healthy, self.ejected)

    def snapshot(self) -> BackendSnapshot:
        a, state, healthy, ejected = self.shown
        return BackendSnapshot(self.addr, state, healthy, ejected, self.in_flight,
                               a.weight, a.priority, a.zone, a.attributes)

    def __repr__(self) -> str:
        return f"<Backend {self.addr} {self.state.name}>"
