"""Connection pools: N grpc channels (N HTTP/2 connections) to one backend, used as one.

One HTTP/2 connection carries at most ``MAX_CONCURRENT_STREAMS`` RPCs at a
time (100 by default in grpc servers) and is served by one server thread
for reads, so a hot backend can need several. With
``ChannelSettings(connections_per_backend=N)`` (or ``connections_per_backend
= N`` in a config file) each backend's channel is a :class:`PooledChannel`
(and its grpc.aio channels :class:`PooledAioChannel`): N grpc channels to
the same address, each with its own subchannel pool (the backend channels
are made with ``grpc.use_local_subchannel_pool``), so N connections. Each
RPC goes to the READY connection with the fewest RPCs in flight.

The pool is a grpc channel to the rest of the library: a backend, its
connectivity, its in-flight count and ``backends()`` see one backend.
Connectivity is the best of the members' (READY if any is); the control
loop's regular reads of it also refresh which members are READY.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from ._grpc_compat import state_reader
from .balancer import aggregate_state

__all__ = ["PooledAioChannel", "PooledChannel"]

_READY = grpc.ChannelConnectivity.READY


class _Member:
    """One connection of a pool and the RPCs in flight on it."""

    __slots__ = ("channel", "index", "lock", "n", "read")

    def __init__(self, index: int, channel: Any, read: Callable[[bool], grpc.ChannelConnectivity]) -> None:
        self.index = index
        self.channel = channel
        self.read = read
        self.n = 0
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            self.n += 1

    def release(self, *_: Any) -> None:
        with self.lock:
            self.n -= 1


class _Pool:
    """What both pool kinds share: members, the READY ones, the least-loaded choice."""

    def __init__(self, channels: Sequence[Any], reader: Callable[[Any], Callable[[bool], grpc.ChannelConnectivity]]
                 ) -> None:
        if not channels:
            raise ValueError("a pool needs at least one channel")
        self.members = tuple(_Member(i, ch, reader(ch)) for i, ch in enumerate(channels))
        # Replaced whole by read_state (the control thread); read by RPCs.
        self.ready: tuple[_Member, ...] = ()
        self._wanted = False

    def read_state(self, try_to_connect: bool) -> grpc.ChannelConnectivity:
        """The pool's connectivity; refreshes the READY members. Once asked to connect, a member that
        went IDLE is asked again, so the pool keeps its N connections."""
        self._wanted = self._wanted or try_to_connect
        states = [m.read(self._wanted) for m in self.members]
        self.ready = tuple(m for m, s in zip(self.members, states, strict=True) if s is _READY)
        return aggregate_state(states)

    def choose(self) -> _Member:
        """The READY member with the fewest RPCs in flight (any member before the first read)."""
        best = None
        for m in self.ready or self.members:
            if best is None or m.n < best.n:
                best = m
        assert best is not None
        return best


class _Multi:
    """A multicallable over the pool: each call goes to the least-loaded connection."""

    __slots__ = ("_calls", "_pool")

    def __init__(self, pool: _Pool, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._pool = pool
        self._calls = tuple(getattr(m.channel, kind)(method, ser, deser, _registered_method=registered)
                            for m in pool.members)

    def _blocking(self, attr: str | None, *args: Any, **kwargs: Any) -> Any:
        m = self._pool.choose()
        m.take()
        try:
            mc = self._calls[m.index]
            return (mc if attr is None else getattr(mc, attr))(*args, **kwargs)
        finally:
            m.release()

    def _started(self, attr: str | None, *args: Any, **kwargs: Any) -> Any:
        m = self._pool.choose()
        m.take()
        try:
            mc = self._calls[m.index]
            call = (mc if attr is None else getattr(mc, attr))(*args, **kwargs)
        except BaseException:
            m.release()
            raise
        call.add_done_callback(m.release)
        return call


class _UnaryResponse(_Multi):
    """unary_unary and stream_unary: the call blocks; ``future`` does not."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._blocking(None, *args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._blocking("with_call", *args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._started("future", *args, **kwargs)


class _StreamResponse(_Multi):
    """unary_stream and stream_stream (and every grpc.aio multicallable): the call is returned at once."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._started(None, *args, **kwargs)


class PooledChannel(grpc.Channel):
    """N sync grpc channels to one address as one ``grpc.Channel`` (see the module doc)."""

    def __init__(self, channels: Sequence[grpc.Channel]) -> None:
        self._pool = _Pool(channels, state_reader)

    @property
    def size(self) -> int:
        return len(self._pool.members)

    def in_flight(self) -> list[int]:
        """RPCs in flight per connection (for tests and diagnostics)."""
        return [m.n for m in self._pool.members]

    def read_state(self, try_to_connect: bool) -> grpc.ChannelConnectivity:
        """Connectivity for :func:`discovery._grpc_compat.state_reader`; non-blocking."""
        return self._pool.read_state(try_to_connect)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> Any:
        return _UnaryResponse(self._pool, "unary_unary", method, request_serializer, response_deserializer,
                              _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _UnaryResponse(self._pool, "stream_unary", method, request_serializer, response_deserializer,
                              _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _StreamResponse(self._pool, "unary_stream", method, request_serializer, response_deserializer,
                               _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> Any:
        return _StreamResponse(self._pool, "stream_stream", method, request_serializer, response_deserializer,
                               _registered_method)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        raise NotImplementedError("a pooled backend channel is watched by its backend, not by subscribe()")

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        raise NotImplementedError("a pooled backend channel is watched by its backend, not by subscribe()")

    def close(self) -> None:
        for m in self._pool.members:
            m.channel.close()

    def __enter__(self) -> PooledChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PooledAioChannel(grpc.aio.Channel):
    """N grpc.aio channels to one address as one ``grpc.aio.Channel``; use it on their loop."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        self._pool = _Pool(channels, lambda ch: ch.get_state)

    def in_flight(self) -> list[int]:
        return [m.n for m in self._pool.members]

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._pool.read_state(try_to_connect)

    def _multi(self, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> Any:
        return _StreamResponse(self._pool, kind, method, ser, deser, registered)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> Any:
        return self._multi("unary_unary", method, request_serializer, response_deserializer, _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return self._multi("unary_stream", method, request_serializer, response_deserializer, _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return self._multi("stream_unary", method, request_serializer, response_deserializer, _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> Any:
        return self._multi("stream_stream", method, request_serializer, response_deserializer, _registered_method)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() is last_observed_state:
            # The pool's state changes only when a member's does.
            waits = [asyncio.ensure_future(m.channel.wait_for_state_change(m.channel.get_state()))
                     for m in self._pool.members]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def channel_ready(self) -> None:
        while (state := self.get_state(True)) is not _READY:
            await self.wait_for_state_change(state)

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(*(m.channel.close(grace) for m in self._pool.members))

    async def __aenter__(self) -> PooledAioChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
