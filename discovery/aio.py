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

Interceptors: the factories take ``interceptors=`` as :func:`grpc.aio.insecure_channel`
does, with grpc.aio's own interceptor classes and rules (each interceptor is
filed under the first of the four client-interceptor types it is an instance
of). They run once per RPC, around every attempt of it: retries, re-picks and
hedges happen below them, as in gRPC.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc.aio import _interceptor as _grpc_interceptor

from . import _from_config, _open
from .backend import Backend, BackendSnapshot, CallableKey
from .balancer import Metadata
from .calls.aio import AioStreamCall, AioUnaryCall, CallContext, UnaryStart
from .core import ChannelCore, build_core
from .errors import ConfigError
from .methodconfig import MethodConfig
from .settings import ChannelSettings

__all__ = ["Channel", "channel_from_config", "insecure_channel", "secure_channel"]

_C = grpc.ChannelConnectivity

_INTERCEPTOR_KINDS = (
    ("unary_unary", grpc.aio.UnaryUnaryClientInterceptor),
    ("unary_stream", grpc.aio.UnaryStreamClientInterceptor),
    ("stream_unary", grpc.aio.StreamUnaryClientInterceptor),
    ("stream_stream", grpc.aio.StreamStreamClientInterceptor),
)
Interceptors = Mapping[str, Sequence[grpc.aio.ClientInterceptor]]


def _sort_interceptors(interceptors: Sequence[grpc.aio.ClientInterceptor] | None) -> Interceptors:
    """The interceptors by RPC kind, as grpc.aio files them: each under the FIRST of the
    four client-interceptor types it is an instance of. Anything else is a ConfigError."""
    out: dict[str, list[grpc.aio.ClientInterceptor]] = {kind: [] for kind, _ in _INTERCEPTOR_KINDS}
    if interceptors is None:
        return out
    if isinstance(interceptors, grpc.aio.ClientInterceptor) or not isinstance(interceptors, Sequence):
        raise ConfigError(f"expected a sequence of grpc.aio client interceptors, got {interceptors!r}",
                          key_path="interceptors")
    for i, interceptor in enumerate(interceptors):
        for kind, cls in _INTERCEPTOR_KINDS:
            if isinstance(interceptor, cls):
                out[kind].append(interceptor)
                break
        else:
            raise ConfigError(
                f"{interceptor!r} is not a grpc.aio UnaryUnaryClientInterceptor, UnaryStreamClientInterceptor, "
                "StreamUnaryClientInterceptor or StreamStreamClientInterceptor", key_path=f"interceptors[{i}]")
    return out


class _MultiCallable:
    __slots__ = ("_core", "_fast_loop", "_interceptors", "_key", "_loop", "_mc", "_method", "_replayable",
                 "_simple", "_starts", "_stream")

    def __init__(self, core: ChannelCore, kind: str, method: str, ser: Any, deser: Any, registered: bool,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self._core = core
        self._method = method
        self._key: CallableKey = (kind, method, ser, deser, registered)
        self._replayable = kind in ("unary_unary", "unary_stream")
        self._stream = kind in ("unary_stream", "stream_stream")
        self._mc: MethodConfig | None = core.service_config.method_config(method)
        self._interceptors = interceptors
        self._loop: asyncio.AbstractEventLoop | None = None
        # A unary-unary method with no method config and no interceptors:
        # calls on the bound loop take UnaryStart's fast path.
        self._simple = kind == "unary_unary" and self._mc is None and not interceptors
        self._fast_loop: asyncio.AbstractEventLoop | None = None
        self._starts: dict[Backend, Any] = {}  # UnaryStart's per-backend starts on _fast_loop

    def _call(self, arg: Any, timeout: float | None, metadata: Metadata | None, credentials: Any,
              wait_for_ready: bool | None, compression: Any) -> Any:
        if self._core.closed:
            raise asyncio.InvalidStateError("this Channel is closed")
        if self._interceptors:
            return _INTERCEPTED[self._key[0]](self, arg, timeout, metadata, credentials, wait_for_ready, compression)
        return self._start(self._method, self._key, self._mc, arg, timeout, metadata, credentials, wait_for_ready,
                           compression)

    def _start(self, method: str, key: CallableKey, mc: MethodConfig | None, arg: Any, timeout: float | None,
               metadata: Metadata | None, credentials: Any, wait_for_ready: bool | None, compression: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        ctx = CallContext(self._core, key, method, arg, timeout, metadata, credentials, wait_for_ready, compression,
                          mc, loop)
        if self._stream:
            return AioStreamCall(ctx, self._replayable)
        return AioUnaryCall(ctx, self._replayable)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # The first RPC on this loop: the channel learns its loop (its backends'
        # grpc.aio channels are made there).
        if self._core.aio_loop is None:
            self._core.bind_loop(loop)
        self._loop = loop
        if self._simple:
            self._fast_loop = loop
            self._starts = {}  # they started calls on the old loop

    def _leaf(self, details: grpc.aio.ClientCallDetails, arg: Any, compression: Any) -> Any:
        """The call at the end of the interceptor chain, made from the details the interceptors passed on."""
        raw = details.method
        method = raw.decode() if isinstance(raw, bytes) else str(raw)
        key, mc = self._key, self._mc
        if method != self._method:  # an interceptor may send the RPC to another method
            key = (key[0], method, key[2], key[3], key[4])
            mc = self._core.service_config.method_config(method)
        # A grpc.aio.Metadata iterates as (key, value) pairs, which is all a picker reads.
        metadata: Any = details.metadata
        return self._start(method, key, mc, arg, details.timeout, metadata, details.credentials,
                           details.wait_for_ready, compression)

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        core = self._core
        if self._interceptors or core.closed:
            return self._call(request, timeout, metadata, credentials, wait_for_ready, compression)
        # _call and _start written out: two Python calls less per RPC.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        ctx = CallContext(core, self._key, self._method, request, timeout, metadata, credentials, wait_for_ready,
                          compression, self._mc, loop)
        if self._stream:
            return AioStreamCall(ctx, self._replayable)
        return AioUnaryCall(ctx, self._replayable)


# grpc.aio runs a chain of interceptors in its Intercepted*Call classes, whose
# innermost continuation makes a grpc.aio call on a C channel. Each subclass
# below keeps grpc.aio's chain, and with it grpc.aio's semantics (what an
# interceptor may return, cancellation while interceptors run, write() and
# done_writing() through the chain), and replaces only that innermost step by
# this channel's call, which balances, retries and hedges under the
# interceptors. tests/test_matrix_interceptors.py pins the grpc.aio internals
# relied on: the classes' constructor arguments and _run_interceptor.


def _intercepted_class(base: type) -> type:
    class Intercepted(base):  # type: ignore[misc]
        def __init__(self, owner: _MultiCallable, arg: Any, timeout: float | None, metadata: Any,
                     credentials: Any, wait_for_ready: bool | None, compression: Any) -> None:
            self._discovery = (owner, compression)
            # Interceptors see what grpc.aio shows them: a grpc.aio.Metadata and the method as bytes.
            if metadata is None:
                metadata = grpc.aio.Metadata()
            elif not isinstance(metadata, grpc.aio.Metadata):
                metadata = grpc.aio.Metadata(*metadata)
            super().__init__(owner._interceptors, arg, timeout, metadata, credentials, wait_for_ready, None,
                             owner._method.encode(), None, None, asyncio.get_running_loop())

        async def _run_interceptor(self, interceptors: Sequence[Any], method: bytes, ser: Any, deser: Any,
                                   details: grpc.aio.ClientCallDetails, arg: Any) -> Any:
            if interceptors:
                # grpc.aio's own step; the continuation it gives the interceptor is this method again.
                return await super()._run_interceptor(interceptors, method, ser, deser, details, arg)
            owner, compression = self._discovery
            return owner._leaf(details, arg, compression)

    Intercepted.__name__ = Intercepted.__qualname__ = f"Discovery{base.__name__}"
    return Intercepted


_INTERCEPTED = {
    "unary_unary": _intercepted_class(_grpc_interceptor.InterceptedUnaryUnaryCall),
    "unary_stream": _intercepted_class(_grpc_interceptor.InterceptedUnaryStreamCall),
    "stream_unary": _intercepted_class(_grpc_interceptor.InterceptedStreamUnaryCall),
    "stream_stream": _intercepted_class(_grpc_interceptor.InterceptedStreamStreamCall),
}


class _UnaryUnary(UnaryStart, _MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):  # type: ignore[misc]
    # UnaryStart's __call__: the fast path once the loop is bound; the rest as _call does it.
    __slots__ = ()

    def general(self, request: Any, timeout: float | None, metadata: Metadata | None,
                credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                compression: grpc.Compression | None) -> Any:
        return self._call(request, timeout, metadata, credentials, wait_for_ready, compression)


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

    def __init__(self, core: ChannelCore, interceptors: Interceptors | None = None) -> None:
        self._core = core
        self._interceptors: Interceptors = interceptors or _sort_interceptors(None)

    @property
    def target(self) -> str:
        return self._core.target

    def backends(self) -> tuple[BackendSnapshot, ...]:
        """Snapshots of the current address set, as :meth:`discovery.Channel.backends`."""
        return tuple(b.snapshot() for b in self._core.listed)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _UnaryUnary(self._core, "unary_unary", method, request_serializer, response_deserializer,
                           bool(_registered_method), self._interceptors["unary_unary"])

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _UnaryStream(self._core, "unary_stream", method, request_serializer, response_deserializer,
                            bool(_registered_method), self._interceptors["unary_stream"])

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _StreamUnary(self._core, "stream_unary", method, request_serializer, response_deserializer,
                            bool(_registered_method), self._interceptors["stream_unary"])

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _StreamStream(self._core, "stream_stream", method, request_serializer, response_deserializer,
                             bool(_registered_method), self._interceptors["stream_stream"])

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


def _intercepted_by(channel: Channel, interceptors: Interceptors) -> Channel:
    channel._interceptors = interceptors
    return channel


def insecure_channel(
    target: str,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    *,
    service_config: Mapping[str, Any] | str | None = None,
    resolver_config: Mapping[str, Any] | None = None,
    settings: ChannelSettings | None = None,
) -> Channel:
    """:func:`discovery.insecure_channel`, as a :class:`grpc.aio.Channel`.

    ``interceptors`` are grpc.aio client interceptors, as for :func:`grpc.aio.insecure_channel`.
    """
    checked = _sort_interceptors(interceptors)  # before anything starts
    return _intercepted_by(_open(target, None, options, compression, service_config, resolver_config, settings,
                                 aio=True), checked)


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    *,
    service_config: Mapping[str, Any] | str | None = None,
    resolver_config: Mapping[str, Any] | None = None,
    settings: ChannelSettings | None = None,
) -> Channel:
    """:func:`discovery.secure_channel`, as a :class:`grpc.aio.Channel` (``interceptors`` as grpc.aio's)."""
    if credentials is None:
        raise ConfigError("expected grpc.ChannelCredentials, got None; use insecure_channel for plaintext",
                          key_path="credentials")
    checked = _sort_interceptors(interceptors)
    return _intercepted_by(_open(target, credentials, options, compression, service_config, resolver_config,
                                 settings, aio=True), checked)


def channel_from_config(service: str, path: str | os.PathLike[str] | None = None, *,
                        settings: ChannelSettings | None = None,
                        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None) -> Channel:
    """:func:`discovery.channel_from_config`, as a :class:`grpc.aio.Channel` (``interceptors`` as grpc.aio's)."""
    checked = _sort_interceptors(interceptors)
    return _intercepted_by(_from_config(service, path, settings, aio=True), checked)


def build_aio_channel(**parts: Any) -> Channel:
    """Assemble an asyncio channel (see :func:`discovery.core.build_core` for the parts)."""
    return Channel(build_core(**parts, aio=True))
