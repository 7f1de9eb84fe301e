"""Calls as grpc.aio calls on an event loop, with every attempt rule of :mod:`discovery.attempts`.

Used by :class:`discovery.aio.Channel` (on the application's loop) and by the
sync channel's ``.future()`` and hedged calls (on the shared futures loop,
driven by :class:`discovery._futures.BridgedFuture`).

The call objects are :class:`~discovery.calls.aio_unary.AioUnaryCall` and
:class:`~discovery.calls.aio_stream.AioStreamCall`; this module adds
:class:`UnaryStart`, the hot path that starts the common unary-unary call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from .._grpc_compat import AioUnaryParts, aio_unary_parts
from ..backend import forget_closed
from ..balancer import Drop, Metadata
from . import books
from .aio_stream import AioStreamCall
from .aio_unary import AioUnaryCall
from .books import unused
from .context import CallContext, aio_error

if TYPE_CHECKING:
    from ..backend import Backend, CallableKey
    from ..core import ChannelCore

__all__ = ["AioStreamCall", "AioUnaryCall", "CallContext", "UnaryStart", "aio_error"]


# How UnaryStart starts calls on one backend: aio_unary_parts(...) (or
# _NO_PARTS), the backend channel's set of calls started from those parts,
# and grpc's multicallable (its bound __call__), used when there are no parts
# or the call asks for compression.
_Start = tuple[Any, Any, bytes, Any, Any, int, "set[Any]", "Callable[..., Any]"]
_NO_PARTS: AioUnaryParts = (None, None, b"", None, None, 0)


class UnaryStart:
    """Calling it starts a unary-unary RPC of one method with no method config on the
    running event loop and returns its :class:`AioUnaryCall` at once: the hot path of
    :class:`discovery.aio.Channel` calls and of the sync channel's ``.future()``.

    A mixin of those channels' multicallables, with grpc.aio's ``__call__``
    signature. It takes the fast way only on ``_fast_loop`` (None: never) and
    while nobody observes: one pick, the backend's books written out, the
    grpc.aio call, and no :class:`CallContext` unless the first attempt fails.
    Anything else (no pick yet, a picker that wants the attempt's result, a
    backend closed under us) is handed to :meth:`general` or goes the general
    way with the pick already made. Call on the loop's thread.
    """

    __slots__ = ()

    _core: ChannelCore
    _key: CallableKey
    _method: str
    _fast_loop: asyncio.AbstractEventLoop | None
    # How to start this method's calls on each backend on _fast_loop: one
    # lookup keyed by the backend's identity per RPC, rather than the
    # backend's twin for the loop and then its multicallable under the 5-tuple
    # key (hashed per RPC). Emptied when _fast_loop changes.
    _starts: dict[Backend, _Start]

    def _start_on(self, b: Backend, loop: asyncio.AbstractEventLoop) -> _Start:
        """How to start this method's calls on ``b`` on ``loop``, cached in ``_starts``."""
        forget_closed(self._starts)
        twin = b.aio_twins.get(loop) or b.twin_for(loop)
        mc = twin.callables.get(self._key) or twin.callable(self._key)
        parts = aio_unary_parts(getattr(mc, "__self__", None))
        start: _Start = (parts or _NO_PARTS) + (twin.active, mc)
        self._starts[b] = start
        return start

    def general(self, request: Any, timeout: float | None, metadata: Metadata | None,
                credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                compression: grpc.Compression | None) -> Any:
        """The call, made the general way (the owner's interceptors, another loop, an observer)."""
        raise NotImplementedError

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        core = self._core
        loop = asyncio.get_running_loop()
        if loop is not self._fast_loop or books.observer is not None or core.closed:
            return self.general(request, timeout, metadata, credentials, wait_for_ready, compression)
        method = self._method
        try:
            pr = core.picker.pick(method, metadata)
        except Drop:
            pr = None  # the general path picks again and raises the drop
        b: Backend | None = None
        if pr is not None and pr.done is None:
            # Backend.begin, written out (in the same order: add, then read closed).
            b = pr.subconn.backend
            b.tokens.append(None)
            if b.closed:
                b.end()  # refused, as in Backend.begin
                b = None
        key = self._key
        if b is None or pr is None:
            ctx = CallContext(core, key, method, request, timeout, metadata, credentials, wait_for_ready,
                              compression, None, loop)
            return AioUnaryCall(ctx, True, pr)
        t0 = time.perf_counter()
        try:
            s = self._starts.get(b) or self._start_on(b, loop)
            make = s[0]
            # wait_for_ready is the channel's job, as in CallContext.start.
            if make is not None and compression is None:
                # grpc.aio's multicallable's work, done here (see discovery._grpc_compat,
                # "made without the multicallable"): the deadline on time.time(),
                # the metadata as a sequence of pairs (the call makes it a tuple).
                call = make(request, None if timeout is None else time.time() + timeout,
                            () if metadata is None else metadata, credentials, None, s[1], s[2], s[3], s[4], loop,
                            s[5])
                s[6].add(call)
            else:
                call = s[7](request, timeout=timeout, metadata=metadata, credentials=credentials,
                            wait_for_ready=None, compression=compression)
        except BaseException:
            b.end()
            unused(pr)
            raise
        c = AioUnaryCall.__new__(AioUnaryCall)
        c._first = b
        c._call = c._first_call = call
        # What the fast path of __await__ reads, set here so those reads are
        # plain instance reads rather than fall-backs to the class defaults.
        c._callbacks = c._outcome = None
        c._cancelled = False
        c._args = (self, request, timeout, metadata, credentials, wait_for_ready, compression, loop, pr, t0, call, s[6])
        try:
            # grpc's C-level call runs a done-callback with no argument: no
            # functools.partial per RPC (see discovery._grpc_compat).
            register = call._cython_call.add_done_callback
        except AttributeError:  # a call object that is not grpc's own
            register = call.add_done_callback
        register(c._first_done)
        return c
