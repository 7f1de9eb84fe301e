"""The drop-in channel: a real :class:`grpc.Channel` that balances over many backends.

``Channel`` is a thin facade over a :class:`~discovery.core.ChannelCore` (the
resolver, the subchannel manager and the balancer on a control thread). Each
RPC reads the current picker and goes to the picked backend's grpc channel
through the drivers in :mod:`discovery.calls`: blocking calls on the caller's
thread, ``.future()`` and hedged calls as grpc.aio calls on the shared futures
loop. Generated stubs, ``grpc.intercept_channel``, metadata, deadlines, call
credentials, compression and all four RPC shapes work unchanged because every
attempt ends up on a plain grpc channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import grpc
import grpc.aio

if TYPE_CHECKING:
    _UU = grpc.UnaryUnaryMultiCallable[Any, Any]
    _US = grpc.UnaryStreamMultiCallable[Any, Any]
    _SU = grpc.StreamUnaryMultiCallable[Any, Any]
    _SS = grpc.StreamStreamMultiCallable[Any, Any]
else:  # the multicallables are generic only in the type stubs
    _UU = grpc.UnaryUnaryMultiCallable
    _US = grpc.UnaryStreamMultiCallable
    _SU = grpc.StreamUnaryMultiCallable
    _SS = grpc.StreamStreamMultiCallable

from ._calls import LocalRpcError
from ._futures import BridgedFuture, future_on_loop, shared_loop
from ._requests import requests_off_loop
from .backend import Backend, BackendSnapshot, CallableKey
from .balancer import Metadata
from .calls.aio import AioUnaryCall, CallContext, UnaryStart
from .calls.blocking import blocking_unary, start_stream
from .core import ChannelCore, build_core
from .methodconfig import MethodConfig
from .settings import ChannelSettings

__all__ = ["Channel", "ChannelSettings"]

log = logging.getLogger("discovery.channel")


class _FuturesStart(UnaryStart):
    """A sync multicallable's unary-unary ``.future()`` calls, on the shared futures loop
    (see :class:`~discovery.calls.aio.UnaryStart`). ``key`` has no request serializer:
    the future serializes the request itself."""

    __slots__ = ("_core", "_fast_loop", "_key", "_method", "_starts")

    def __init__(self, core: ChannelCore, key: CallableKey, method: str, loop: asyncio.AbstractEventLoop) -> None:
        self._core = core
        self._key = key
        self._method = method
        self._fast_loop = loop
        self._starts = {}

    def general(self, request: Any, timeout: float | None, metadata: Metadata | None,
                credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                compression: grpc.Compression | None) -> AioUnaryCall:
        ctx = CallContext(self._core, self._key, self._method, request, timeout, metadata, credentials,
                          wait_for_ready, compression, None, asyncio.get_running_loop())
        return AioUnaryCall(ctx, True)


class _MultiCallable:
    __slots__ = ("_core", "_fstart", "_hedged", "_key", "_mc", "_mcalls", "_method", "_replayable")

    def __init__(self, core: ChannelCore, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._core = core
        self._method = method
        self._key: CallableKey = (kind, method, ser, deser, registered)
        # A request iterator cannot be replayed; a single request can.
        self._replayable = kind in ("unary_unary", "unary_stream")
        # Looked up once here, not per RPC: None in the common case of no method config.
        self._mc: MethodConfig | None = core.service_config.method_config(method)
        self._hedged = self._mc is not None and self._mc.hedging is not None and self._replayable
        self._fstart: _FuturesStart | None = None  # made at the first unary-unary .future()
        self._mcalls: dict[Backend, Any] = {}  # each backend's multicallable (see blocking_unary)

    def _future(self, arg: Any, timeout: float | None, metadata: Metadata | None,
                credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                compression: grpc.Compression | None) -> BridgedFuture:
        # Runs on the shared futures loop as grpc.aio calls: see discovery._futures.
        core, key, method, mc, replayable = self._core, self._key, self._method, self._mc, self._replayable
        if not replayable:
            # A request iterator that blocks must not stall every future of the process.
            arg = requests_off_loop(arg)

        loops = shared_loop()
        ser = key[2] if replayable else None
        if ser is not None:
            # The request is serialized here, once for every attempt, as grpcio's own
            # future does: grpc.aio would send an empty message when the serializer
            # fails, where grpcio fails the RPC.
            key = (key[0], key[1], None, key[3], key[4])

        def make() -> AioUnaryCall:
            nonlocal arg
            if ser is not None:
                try:
                    arg = ser(arg)
                except Exception:
                    log.exception("Exception serializing message!")
                    raise LocalRpcError(grpc.StatusCode.INTERNAL, "Exception serializing request!") from None
            if mc is None and key[0] == "unary_unary":
                start = self._fstart
                if start is None or start._fast_loop is not loops.loop:
                    start = self._fstart = _FuturesStart(core, key, method, loops.loop)
                call: AioUnaryCall = start(arg, timeout=timeout, metadata=metadata, credentials=credentials,
                                           wait_for_ready=wait_for_ready, compression=compression)
                return call
            ctx = CallContext(core, key, method, arg, timeout, metadata, credentials, wait_for_ready, compression,
                              mc, loops.loop)
            return AioUnaryCall(ctx, replayable)

        return future_on_loop(loops, make, timeout, arg)

    def _blocking(self, with_call: bool, arg: Any, timeout: float | None, metadata: Metadata | None,
                  credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                  compression: grpc.Compression | None) -> Any:
        if self._hedged:
            # Hedges run concurrently: on the futures loop, this thread waits.
            f = self._future(arg, timeout, metadata, credentials, wait_for_ready, compression)
            response = f.result()
            return (response, f) if with_call else response
        return blocking_unary(self._core, self._key, self._method, with_call, arg, timeout, metadata, credentials,
                              wait_for_ready, compression, self._mc, self._replayable, self._mcalls)


class _UnaryUnary(_MultiCallable, _UU):
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        if self._hedged:
            return self._blocking(False, request, timeout, metadata, credentials, wait_for_ready, compression)
        # The hot path calls the driver directly: one Python call less per RPC.
        return blocking_unary(self._core, self._key, self._method, False, request, timeout, metadata, credentials,
                              wait_for_ready, compression, self._mc, True, self._mcalls)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                  credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> Any:
        return self._blocking(True, request, timeout, metadata, credentials, wait_for_ready, compression)

    def future(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
               credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:
        return self._future(request, timeout, metadata, credentials, wait_for_ready, compression)


class _UnaryStream(_MultiCallable, _US):
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return start_stream(self._core, self._key, self._method, request, timeout, metadata, credentials,
                            wait_for_ready, compression, self._mc, True)


class _StreamUnary(_MultiCallable, _SU):
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._blocking(False, request_iterator, timeout, metadata, credentials, wait_for_ready, compression)

    def with_call(self, request_iterator: Iterator[Any], timeout: float | None = None,
                  metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._blocking(True, request_iterator, timeout, metadata, credentials, wait_for_ready, compression)

    def future(self, request_iterator: Iterator[Any], timeout: float | None = None,
               metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._future(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamStream(_MultiCallable, _SS):
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return start_stream(self._core, self._key, self._method, request_iterator, timeout, metadata, credentials,
                            wait_for_ready, compression, self._mc, False)


class Channel(grpc.Channel):
    """A :class:`grpc.Channel` that resolves a target and balances RPCs over its backends.

    Build it with :func:`discovery.insecure_channel`, :func:`discovery.secure_channel`
    or :func:`discovery.channel_from_config`. Thread-safe. RPC methods never
    wait on the control plane; an RPC waits only when no backend can be picked
    yet (while connecting, or for ``wait_for_ready`` calls), never past its
    deadline.
    """

    def __init__(self, core: ChannelCore) -> None:
        self._core = core

    @property
    def target(self) -> str:
        """The target this channel resolves."""
        return self._core.target

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> _UU:
        return _UnaryUnary(self._core, "unary_unary", method, request_serializer, response_deserializer,
                           bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _US:
        return _UnaryStream(self._core, "unary_stream", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _SU:
        return _StreamUnary(self._core, "stream_unary", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> _SS:
        return _StreamStream(self._core, "stream_stream", method, request_serializer, response_deserializer,
                             bool(_registered_method))

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Call ``callback(state)`` now and on every aggregate connectivity change.

        Callbacks run on the channel's control thread and must not block.
        ``try_to_connect`` asks the balancer to connect idle backends.
        """
        self._core.subscribe(callback, bool(try_to_connect))

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Stop calling ``callback``."""
        self._core.unsubscribe(callback)

    def backends(self) -> tuple[BackendSnapshot, ...]:
        """Snapshots of the current address set, in resolver order. Non-blocking.

        Backends still draining after removal are not listed. What this shows
        never runs ahead of the picker: once a backend is listed as READY (and
        healthy, not ejected) new RPCs may be picked for it, and once it is
        listed in another state, or no longer listed, they are not.
        """
        return tuple(b.snapshot() for b in self._core.listed)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The aggregate connectivity state (what subscribers were last told). Non-blocking."""
        if try_to_connect:
            self._core.kick()
        return self._core.state

    def close(self, grace: float | None = None) -> None:
        """Close the channel and every backend channel.

        ``grace`` follows ``grpc.aio.Channel.close``: None cancels in-flight
        RPCs at once; a number lets them finish for up to that many seconds
        while new RPCs are refused. Blocks until done. Idempotent.
        """
        self._core.close(grace)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"<discovery.Channel {self._core.target} {self._core.state.name}>"


def build_channel(**parts: Any) -> Channel:
    """Assemble a sync channel (see :func:`discovery.core.build_core` for the parts)."""
    return Channel(build_core(**parts))
