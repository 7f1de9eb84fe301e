"""The asyncio twin: the same balancing channel as a :class:`grpc.aio.Channel`.

::

    from discovery import aio

    async with aio.insecure_channel("dns:///orders.internal:50051") as channel:
        stub = pb2_grpc.OrderServiceStub(channel)
        reply = await stub.GetOrder(request)

The control plane is the sync channel's: the same resolver, subchannel
manager, balancer, health checking, outlier ejection and drain, on the same
control thread. What differs is the data plane. Each RPC is a grpc.aio call
on a grpc.aio twin of the picked backend's channel, made on the
application's event loop the first time that backend serves it. The sync
backend channel keeps watching connectivity and health, so a backend that
serves asyncio RPCs has two connections.

Not yet in the asyncio twin: ``retryPolicy`` retries and transparent
re-picks (an RPC's error reaches the caller as it is); channel
``interceptors=`` (wrap the stub's calls instead).

Threading: use a channel from one event loop. Picking never blocks the loop;
an RPC that has to wait for a backend waits in the default executor.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from . import _open
from . import channel_from_config as _sync_from_config
from ._calls import LocalRpcError
from ._futures import _now
from .backend import Backend, BackendSnapshot, CallableKey
from .balancer import Metadata
from .channel import Channel as SyncChannel
from .channel import ChannelSettings

__all__ = ["Channel", "channel_from_config", "insecure_channel", "secure_channel"]

_C = grpc.ChannelConnectivity
_OK = grpc.StatusCode.OK


class _Status:
    """The code and details of a finished aio call, shaped for the core's books."""

    __slots__ = ("_code", "_details")

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _aio_error(exc: LocalRpcError) -> grpc.aio.AioRpcError:
    """The channel's own failure as the error type grpc.aio callers catch."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(exc.code(), empty, empty, exc.details(), exc.details())


class _Pending(grpc.aio.UnaryUnaryCall[Any, Any], grpc.aio.UnaryStreamCall[Any, Any],
               grpc.aio.StreamUnaryCall[Any, Any], grpc.aio.StreamStreamCall[Any, Any]):
    """An RPC whose backend is not picked yet: every method waits for the real call.

    The rare path (the channel is still connecting, or a ``wait_for_ready``
    call waits for a backend). The common one returns grpc.aio's own call.
    """

    def __init__(self, start: Callable[[], Any]) -> None:
        self._call: Any = None
        self._task = asyncio.ensure_future(self._begin(start))

    async def _begin(self, start: Callable[[], Any]) -> Any:
        self._call = await start()
        return self._call

    async def _ready(self) -> Any:
        return await asyncio.shield(self._task)

    def __await__(self) -> Generator[Any, None, Any]:
        async def run() -> Any:
            return await (await self._ready())

        return run().__await__()

    async def _iterate(self) -> AsyncIterator[Any]:
        call = await self._ready()
        async for message in call:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def read(self) -> Any:
        return await (await self._ready()).read()

    async def write(self, request: Any) -> None:
        await (await self._ready()).write(request)

    async def done_writing(self) -> None:
        await (await self._ready()).done_writing()

    async def wait_for_connection(self) -> None:
        await (await self._ready()).wait_for_connection()

    async def _get(self, name: str) -> Any:
        try:
            call = await self._ready()
        except grpc.aio.AioRpcError as exc:
            return getattr(exc, name)()
        except asyncio.CancelledError:
            return grpc.StatusCode.CANCELLED if name == "code" else ("" if name == "details" else None)
        return await getattr(call, name)()

    async def initial_metadata(self) -> Any:
        return await self._get("initial_metadata")

    async def trailing_metadata(self) -> Any:
        return await self._get("trailing_metadata")

    async def code(self) -> grpc.StatusCode:
        return await self._get("code")  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._get("details")  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancel())
        return self._task.cancel()

    def cancelled(self) -> bool:
        return bool(self._call.cancelled()) if self._call is not None else self._task.cancelled()

    def done(self) -> bool:
        return bool(self._call.done()) if self._call is not None else self._task.done()

    def time_remaining(self) -> float | None:
        return None if self._call is None else self._call.time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        def relay(task: asyncio.Future[Any]) -> None:
            if self._call is not None:
                self._call.add_done_callback(lambda _c: callback(self))
            else:
                callback(self)

        self._task.add_done_callback(relay)


class _MultiCallable:
    __slots__ = ("_core", "_key", "_method")

    def __init__(self, core: Any, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._core = core
        self._method = method
        self._key: CallableKey = (kind, method, ser, deser, registered)

    def _start(self, b: Backend, arg: Any, timeout: float | None, metadata: Any, credentials: Any,
               wait_for_ready: bool | None, compression: Any) -> Any:
        mc = b.twin_for(asyncio.get_running_loop()).callable(self._key)
        b.begin()
        try:
            call = mc(arg, timeout=timeout, metadata=metadata, credentials=credentials,
                      wait_for_ready=wait_for_ready and False, compression=compression)
        except BaseException:
            b.end()
            raise
        core = self._core

        def books(c: Any) -> None:
            # The call is done, so its status getters finish without suspending.
            code = grpc.StatusCode.CANCELLED if c.cancelled() else _now(c.code())
            if code is _OK:
                b.end()
            else:
                core.failed(b, _Status(code, "" if c.cancelled() else _now(c.details()) or ""))

        call.add_done_callback(books)
        return call

    def _call(self, arg: Any, timeout: float | None, metadata: Metadata | None, credentials: Any,
              wait_for_ready: bool | None, compression: Any) -> Any:
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is not None:
            return self._start(b, arg, timeout, metadata, credentials, wait_for_ready, compression)
        if core.closed:
            raise asyncio.InvalidStateError("this Channel is closed")

        async def start() -> Any:
            loop = asyncio.get_running_loop()
            try:
                picked, remaining = await loop.run_in_executor(
                    None, core.wait_pick, self._method, metadata, timeout, wait_for_ready)
            except LocalRpcError as exc:
                raise _aio_error(exc) from None
            return self._start(picked, arg, remaining, metadata, credentials, wait_for_ready, compression)

        return _Pending(start)

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

    def __init__(self, sync: SyncChannel) -> None:
        self._sync = sync
        self._core = sync._core

    @property
    def target(self) -> str:
        return self._sync.target

    def backends(self) -> tuple[BackendSnapshot, ...]:
        """Snapshots of the current address set, as :meth:`discovery.Channel.backends`."""
        return self._sync.backends()

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
            self._core.rebalance()
        return self._core.state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once the aggregate state differs from ``last_observed_state``."""
        loop = asyncio.get_running_loop()
        changed: asyncio.Future[None] = loop.create_future()

        def on_state(state: grpc.ChannelConnectivity) -> None:
            if state is not last_observed_state:
                loop.call_soon_threadsafe(lambda: None if changed.done() else changed.set_result(None))

        self._sync.subscribe(on_state)
        try:
            await changed
        finally:
            self._sync.unsubscribe(on_state)

    async def channel_ready(self) -> None:
        """Return once the channel is READY (asks idle backends to connect)."""
        state = self.get_state(try_to_connect=True)
        while state is not _C.READY:
            await self.wait_for_state_change(state)
            state = self.get_state()

    async def close(self, grace: float | None = None) -> None:
        """Close as :meth:`grpc.aio.Channel.close`: None cancels RPCs, a number lets them finish."""
        await asyncio.get_running_loop().run_in_executor(None, self._sync.close, grace)

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
    return Channel(_open(target, None, options, compression, service_config, resolver_config, settings))


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
    return Channel(_open(target, credentials, options, compression, service_config, resolver_config, settings))


def channel_from_config(service: str, path: str | os.PathLike[str] | None = None, *,
                        settings: ChannelSettings | None = None) -> Channel:
    """:func:`discovery.channel_from_config`, as a :class:`grpc.aio.Channel`."""
    return Channel(_sync_from_config(service, path, settings=settings))
