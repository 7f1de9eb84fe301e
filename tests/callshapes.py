"""Every call shape, sync and asyncio, run on a discovery channel from a test's own thread.

The matrix tests (``tests/test_matrix_*.py``) parametrize over :data:`SHAPES`
and use one :class:`Client` per channel. A shape's RPC goes to the echo
service of :class:`discovery.testing.servers.BackendServer`, and its
:class:`Outcome` names the backend that answered, whatever the shape, so a
test can say "went to b" the same way for a server stream and a bidi call.

asyncio shapes run on a :class:`LoopThread` (one event loop in a thread of its
own), so a test stays a plain function that blocks on results with timeouts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

import discovery
from discovery import aio
from discovery.calls.books import metadata_tuple
from discovery.testing.servers import SERVICE, EchoStub

__all__ = [
    "AIO_SHAPES",
    "FAST_RECONNECT",
    "METHOD",
    "SHAPES",
    "SINGLE_REQUEST",
    "SYNC_SHAPES",
    "UNARY_RESPONSE",
    "Client",
    "LoopThread",
    "Outcome",
    "is_aio",
    "method_config",
]

T = TypeVar("T")

SYNC_SHAPES = ("unary", "with_call", "future", "unary_stream", "stream_unary", "stream_unary_future",
               "stream_stream")
AIO_SHAPES = ("aio_unary", "aio_unary_stream", "aio_stream_unary", "aio_stream_stream")
SHAPES = SYNC_SHAPES + AIO_SHAPES

# Shapes with one request message: the channel may replay it on another
# backend (retries, transparent re-picks, hedges). A request stream is never
# replayed (README, "Feature x call shape").
SINGLE_REQUEST = frozenset({"unary", "with_call", "future", "unary_stream", "aio_unary", "aio_unary_stream"})
UNARY_RESPONSE = frozenset({"unary", "with_call", "future", "stream_unary", "stream_unary_future", "aio_unary",
                            "aio_stream_unary"})

# The echo method each shape calls (BackendServer.calls is keyed by these).
METHOD = {
    "unary": "Unary", "with_call": "Unary", "future": "Unary", "aio_unary": "Unary",
    "unary_stream": "ServerStream", "aio_unary_stream": "ServerStream",
    "stream_unary": "ClientStream", "stream_unary_future": "ClientStream", "aio_stream_unary": "ClientStream",
    "stream_stream": "Bidi", "aio_stream_stream": "Bidi",
}

# Backend channels that reconnect within a fraction of a second (grpc's default is 1 s, x1.6).
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 150))


def is_aio(shape: str) -> bool:
    return shape.startswith("aio_")


def method_config(**fields: Any) -> dict[str, Any]:
    """A service config with one ``methodConfig`` entry for the echo service."""
    return {"methodConfig": [{"name": [{"service": SERVICE}], **fields}]}


@dataclass(frozen=True)
class Outcome:
    """How one RPC ended: its status, the backend that answered (its name; "" on
    failure), the trailing metadata the shape shows, and how long it took."""

    code: grpc.StatusCode
    backend: str = ""
    details: str = ""
    trailing: tuple[tuple[str, Any], ...] = ()
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def _name(reply: bytes, stream_request: bool) -> str:
    # ClientStream answers "name:count", Bidi "name:request"; names contain colons too.
    return (reply.rsplit(b":", 1)[0] if stream_request else reply).decode()


class LoopThread:
    """An asyncio event loop running in a daemon thread, for asyncio channels in sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-aio-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Client:
    """One discovery channel (sync, or asyncio on ``loop``) and the means to run any shape on it.

    ``interceptors`` wrap the channel the way a user would: ``grpc.intercept_channel``
    for a sync channel, the factory's ``interceptors=`` for an asyncio one.
    """

    def __init__(self, target: str, *, loop: LoopThread | None = None, service_config: Any = None,
                 options: Sequence[tuple[str, Any]] = FAST_RECONNECT, interceptors: Sequence[Any] = (),
                 settings: discovery.ChannelSettings | None = None, resolver_config: Any = None) -> None:
        self.loop = loop
        self._pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="test-rpc")
        self.channel: Any
        if loop is None:
            self.channel = discovery.insecure_channel(target, options, service_config=service_config,
                                                      settings=settings, resolver_config=resolver_config)
            rpc_channel = grpc.intercept_channel(self.channel, *interceptors) if interceptors else self.channel
            self.stub = EchoStub(rpc_channel)
        else:
            async def make() -> Any:
                return aio.insecure_channel(target, options, service_config=service_config, settings=settings,
                                            resolver_config=resolver_config, interceptors=list(interceptors) or None)

            self.channel = loop.run(make())
            self.stub = EchoStub(self.channel)

    @property
    def core(self) -> Any:
        return self.channel._core

    def backends(self) -> tuple[Any, ...]:
        return tuple(self.channel.backends())

    def in_flight(self) -> int:
        """In-flight attempts on every backend, draining ones included."""
        core = self.core
        return sum(b.in_flight for b in (*core.manager.backends, *core.manager.draining))

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no attempt is in flight. An attempt's books close when grpc ends its
        call, which for futures and streams may come just after the caller saw the outcome."""
        from discovery.testing import wait_for

        wait_for(lambda: self.in_flight() == 0, timeout, message="every attempt's books closed")

    # -- running RPCs ---------------------------------------------------------

    def call(self, shape: str, *, timeout: float | None = 10.0, metadata: Sequence[tuple[str, str]] | None = None,
             wait_for_ready: bool | None = None, result_timeout: float = 30.0) -> Outcome:
        """Run one RPC of ``shape`` to the end."""
        return self.start(shape, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready).result(
            result_timeout)

    def start(self, shape: str, *, timeout: float | None = 10.0, metadata: Sequence[tuple[str, str]] | None = None,
              wait_for_ready: bool | None = None, hold: threading.Event | None = None) -> futures.Future[Outcome]:
        """Start one RPC of ``shape``; its :class:`Outcome` arrives on the returned future.

        ``hold`` keeps a request stream open after its first message until the event is set.
        """
        if is_aio(shape) != (self.loop is not None):
            raise ValueError(f"shape {shape} on a {'asyncio' if self.loop else 'sync'} channel")
        kw: dict[str, Any] = {"timeout": timeout, "metadata": metadata, "wait_for_ready": wait_for_ready}
        if self.loop is not None:
            return self.loop.submit(self._aio(shape, kw, hold))
        return self._pool.submit(self._sync, shape, kw, hold)

    def _sync(self, shape: str, kw: dict[str, Any], hold: threading.Event | None = None) -> Outcome:
        s = self.stub
        t0 = time.monotonic()
        trailing: Any = ()

        def requests() -> Iterator[bytes]:
            yield b"a"
            if hold is not None:
                hold.wait(30)

        try:
            if shape == "unary":
                name = _name(s.Unary(b"", **kw), False)
            elif shape == "with_call":
                reply, call = s.Unary.with_call(b"", **kw)
                name, trailing = _name(reply, False), call.trailing_metadata()
            elif shape == "future":
                f = s.Unary.future(b"", **kw)
                name, trailing = _name(f.result(), False), f.trailing_metadata()
            elif shape == "unary_stream":
                it = s.ServerStream(b"1", **kw)
                name, trailing = _name(list(it)[-1], False), it.trailing_metadata()
            elif shape == "stream_unary":
                name = _name(s.ClientStream(requests(), **kw), True)
            elif shape == "stream_unary_future":
                f = s.ClientStream.future(requests(), **kw)
                name, trailing = _name(f.result(), True), f.trailing_metadata()
            elif shape == "stream_stream":
                it = s.Bidi(requests(), **kw)
                name, trailing = _name(list(it)[-1], True), it.trailing_metadata()
            else:
                raise ValueError(shape)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), "", exc.details() or "", metadata_tuple(exc.trailing_metadata()),
                           time.monotonic() - t0)
        return Outcome(grpc.StatusCode.OK, name, "", metadata_tuple(trailing), time.monotonic() - t0)

    async def _aio(self, shape: str, kw: dict[str, Any], hold: threading.Event | None = None) -> Outcome:
        s = self.stub
        t0 = time.monotonic()

        async def one_request() -> AsyncIterator[bytes]:
            yield b"a"
            if hold is not None:
                await asyncio.to_thread(hold.wait, 30)

        try:
            if shape == "aio_unary":
                call = s.Unary(b"", **kw)
                name = _name(await call, False)
            elif shape == "aio_unary_stream":
                call = s.ServerStream(b"1", **kw)
                name = _name([m async for m in call][-1], False)
            elif shape == "aio_stream_unary":
                call = s.ClientStream(one_request(), **kw)
                name = _name(await call, True)
            elif shape == "aio_stream_stream":
                call = s.Bidi(one_request(), **kw)
                name = _name([m async for m in call][-1], True)
            else:
                raise ValueError(shape)
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            return Outcome(exc.code(), "", exc.details() or "", metadata_tuple(exc.trailing_metadata()),
                           time.monotonic() - t0)
        return Outcome(grpc.StatusCode.OK, name, "", metadata_tuple(trailing), time.monotonic() - t0)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run(self.channel.close())
        else:
            self.channel.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


class Clients:
    """Makes :class:`Client` objects for shapes and closes them all at the end (the ``clients`` fixture)."""

    def __init__(self) -> None:
        self._loop: LoopThread | None = None
        self._open: list[Client] = []

    @property
    def loop(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread()
        return self._loop

    def __call__(self, shape: str, target: str, **kw: Any) -> Client:
        """A client whose channel runs ``shape``: asyncio for ``aio_*`` shapes, else sync."""
        c = Client(target, loop=self.loop if is_aio(shape) else None, **kw)
        self._open.append(c)
        return c

    def close(self) -> None:
        errors: list[BaseException] = []
        for c in reversed(self._open):
            try:
                c.close()
            except BaseException as exc:  # close the others, then fail
                errors.append(exc)
        if self._loop is not None:
            self._loop.close()
        if errors:
            raise errors[0]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
    """:func:`discovery.testing.wait_for` with the longer timeout these tests need."""
    from discovery.testing import wait_for

    return wait_for(predicate, timeout, message=message)
