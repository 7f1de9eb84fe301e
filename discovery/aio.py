"""The asyncio channel: the same balancing as a :class:`grpc.aio.Channel`.

::

    from discovery import aio

    async with aio.insecure_channel("dns:///orders.internal:50051") as channel:
        stub = pb2_grpc.OrderServiceStub(channel)
        reply = await stub.GetOrder(request)

Same resolvers, subchannel manager and balancers as the sync channel (one
:class:`~discovery.core.ChannelCore` on a control thread); its own data
plane: each backend has ONE grpc.aio channel, made on the application's
event loop (no sync twin: health checking runs once per backend), and every
RPC runs through :mod:`discovery.calls.aio`: retryPolicy across backends,
hedgingPolicy, transparent re-picks, waitForReady, throttling and deadlines,
exactly as the sync channel does them. An RPC that has to wait for a backend
awaits the next picker; it never blocks the loop or an executor thread.

Threading: use a channel from one event loop (the one it was made on, or the
first that sends an RPC through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from . import _from_config, _open
from .address import Address
from .backend import Backend, BackendSnapshot, CallableKey
from .balancer import Balancer, Metadata
from .calls.aio import AioStreamCall, AioUnaryCall, make_ctx
from .config import ServiceConfig
from .core import ChannelCore, assemble, backend_factory
from .methodconfig import MethodConfig
from .resolver import Resolver
from .settings import ChannelSettings

__all__ = ["Channel", "channel_from_config", "insecure_channel", "secure_channel"]

_C = grpc.ChannelConnectivity


class _MultiCallable:
    __slots__ = ("_core", "_key", "_mc", "_method", "_replayable", "_stream")

    def __init__(self, core: ChannelCore, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._core = core
        self._method = method
        self._key: CallableKey = (kind, method, ser, deser, registered)
        self._replayable = kind in ("unary_unary", "unary_stream")
        self._stream = kind in ("unary_stream", "stream_stream")
        self._mc: MethodConfig | None = core.service_config.method_config(method)

    def _call(self, arg: Any, timeout: float | None, metadata: Metadata | None, credentials: Any,
              wait_for_ready: bool | None, compression: Any) -> Any:
        core = self._core
        if core.closed:
            raise asyncio.InvalidStateError("this Channel is closed")
        loop = asyncio.get_running_loop()
        if core.aio_loop is None:
            core.bind_loop(loop)

        def twin_of(b: Backend) -> Any:
            return b.twin_for(loop)

        ctx = make_ctx(core, self._key, self._method, arg, timeout, metadata, credentials, wait_for_ready,
                       compression, self._mc, twin_of)
        if self._stream:
            return AioStreamCall(ctx, self._replayable)
        return AioUnaryCall(ctx, self._replayable)

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._call(request, timeout, metadata, credentials, wait_for_ready, compression)


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):  # type: ignore[misc]
    __slots__ = ()


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):  # type: ignore[misc]
    __slots__ = ()


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, *, timeout: float | None = None,  # type: ignore[override]
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._call(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, *, timeout: float | None = None,  # type: ignore[override]
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._call(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class Channel(grpc.aio.Channel):
    """A :class:`grpc.aio.Channel` that balances RPCs over a resolved set of backends.

    Build it with :func:`insecure_channel`, :func:`secure_channel` or
    :func:`channel_from_config`. Use it from one event loop. Its RPCs never
    block the loop.
    """

    def __init__(self, core: ChannelCore) -> None:
        self._core = core

    @property
    def target(self) -> str:
        return self._core.target

    def backends(self) -> tuple[BackendSnapshot, ...]:
        """Snapshots of the current address set, as :meth:`discovery.Channel.backends`."""
        return tuple(b.snapshot() for b in self._core.listed)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _UnaryUnary(self._core, "unary_unary", method, request_serializer, response_deserializer,
                           bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _UnaryStream(self._core, "unary_stream", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _StreamUnary(self._core, "stream_unary", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _StreamStream(self._core, "stream_stream", method, request_serializer, response_deserializer,
                             bool(_registered_method))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The aggregate connectivity state. Non-blocking."""
        if try_to_connect:
            self._bind()
            self._core.kick()
        return self._core.state

    def _bind(self) -> None:
        if self._core.aio_loop is None:
            self._core.bind_loop(asyncio.get_running_loop())

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once the aggregate state differs from ``last_observed_state``."""
        loop = asyncio.get_running_loop()
        changed: asyncio.Future[None] = loop.create_future()

        def on_state(state: grpc.ChannelConnectivity) -> None:
            if state is not last_observed_state:
                loop.call_soon_threadsafe(lambda: None if changed.done() else changed.set_result(None))

        self._core.subscribe(on_state, False)
        try:
            await changed
        finally:
            self._core.unsubscribe(on_state)

    async def channel_ready(self) -> None:
        """Return once the channel is READY (asks idle backends to connect)."""
        state = self.get_state(try_to_connect=True)
        while state is not _C.READY:
            await self.wait_for_state_change(state)
            state = self.get_state()

    async def close(self, grace: float | None = None) -> None:
        """Close as :meth:`grpc.aio.Channel.close`: None cancels RPCs, a number lets them finish."""
        core = self._core
        if not core.begin_close():
            return
        started = core.shutdown(grace)
        loop = asyncio.get_running_loop()
        # The control thread does the closing; this only waits for it, off the loop.
        await loop.run_in_executor(None, started.wait, 10.0)
        if grace is not None:
            await loop.run_in_executor(None, core.manager.wait_drained, grace + 1.0)
        core.finish_close()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)

    def __repr__(self) -> str:
        return f"<discovery.aio.Channel {self.target} {self._core.state.name}>"


def insecure_channel(
    target: str,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    *,
    service_config: Mapping[str, Any] | str | None = None,
    resolver_config: Mapping[str, Any] | None = None,
    settings: ChannelSettings | None = None,
) -> Channel:
    """:func:`discovery.insecure_channel`, as a :class:`grpc.aio.Channel`."""
    return _open(target, None, options, compression, service_config, resolver_config, settings,  # type: ignore[no-any-return]
                 aio=True)


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    *,
    service_config: Mapping[str, Any] | str | None = None,
    resolver_config: Mapping[str, Any] | None = None,
    settings: ChannelSettings | None = None,
) -> Channel:
    """:func:`discovery.secure_channel`, as a :class:`grpc.aio.Channel`."""
    if credentials is None:
        raise TypeError("secure_channel needs credentials; use insecure_channel for plaintext")
    return _open(target, credentials, options, compression, service_config, resolver_config,  # type: ignore[no-any-return]
                 settings, aio=True)


def channel_from_config(service: str, path: str | os.PathLike[str] | None = None, *,
                        settings: ChannelSettings | None = None) -> Channel:
    """:func:`discovery.channel_from_config`, as a :class:`grpc.aio.Channel`."""
    return _from_config(service, path, settings, aio=True)  # type: ignore[no-any-return]


def build_aio_channel(
    *,
    target: str,
    resolver_factory: Callable[[ChannelCore], Resolver],
    balancer_factory: Callable[[ChannelCore], Balancer],
    make_channel: Callable[[Address], grpc.Channel],
    settings: ChannelSettings,
    service_config: ServiceConfig,
    make_aio_channel: Callable[[Address], grpc.aio.Channel],
) -> Channel:
    """Assemble an asyncio channel: grpc.aio backend channels only (``make_channel`` unused)."""
    core = ChannelCore(target, settings, service_config)
    # Made outside a loop: bound at the first RPC or channel_ready().
    with contextlib.suppress(RuntimeError):
        core.aio_loop = asyncio.get_running_loop()
    assemble(core, backend_factory(core, None, make_aio_channel), resolver_factory, balancer_factory)
    return Channel(core)
