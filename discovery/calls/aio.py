"""Calls as grpc.aio calls on an event loop, with every attempt rule of :mod:`discovery.attempts`.

Used by :class:`discovery.aio.Channel` (on the application's loop) and by the
sync channel's ``.future()`` and hedged calls (on the shared futures loop,
driven by :class:`discovery._futures.BridgedFuture`).

The first attempt starts eagerly when the call object is made, as grpc.aio
starts its calls; later attempts (re-picks, retries, hedges) run while the
call is awaited. No Task is made per RPC unless it hedges. Each attempt's
books close from the grpc.aio call's own done-callback, so accounting never
depends on anyone awaiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._calls import LocalRpcError
from .._grpc_compat import aio_code_now
from ..balancer import Drop, Metadata, PickResult
from . import books
from .aio_stream import AioStreamCall
from .books import unused
from .context import CallContext, StatusGetters, aio_error, end_unary_attempt
from .hedging import run_hedged

if TYPE_CHECKING:
    from ..backend import CallableKey
    from ..core import ChannelCore

__all__ = ["AioStreamCall", "AioUnaryCall", "CallContext", "aio_error", "start_unary"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class AioUnaryCall(StatusGetters, grpc.aio.UnaryUnaryCall[Any, Any], grpc.aio.StreamUnaryCall[Any, Any]):
    """A unary-response RPC over the channel's backends, as a grpc.aio call object.

    Awaiting it gives the response or raises :class:`grpc.aio.AioRpcError`;
    the metadata and status getters answer for the attempt that decided the
    RPC. Use it from its own event loop.
    """

    # grpc.aio's intercepted write() reads this off the call its interceptors
    # returned; under interceptors the call always gets a request iterator.
    _done_writing_flag = False

    # Defaults at class level: an RPC sets only what changes for it.
    _call: Any = None  # the current (at the end: the deciding) attempt
    _ctx: CallContext | None = None
    _error: grpc.aio.AioRpcError | None = None
    _response: Any = None
    _done = False
    _cancelled = False
    _outcome: asyncio.Future[None] | None = None
    _running = False
    _callbacks: list[Callable[[Any], None]] | None = None
    _replayable = True
    # A call started by start_unary: its first backend, and what a CallContext and
    # the first attempt's books need (see start_unary).
    _first: Any = None
    _args: tuple[Any, ...] = ()

    def __init__(self, ctx: CallContext, replayable: bool, first: PickResult | None = None) -> None:
        self._ctx = ctx
        if not replayable:
            self._replayable = False
            ctx.no_replay()
        pr = first if first is not None else ctx.pick_now()
        if pr is not None:
            self._call = ctx.start(pr)

    def _context(self) -> CallContext:
        """The call's :class:`CallContext`, made when first needed (a call from
        :func:`start_unary` needs one only if its first attempt fails)."""
        ctx = self._ctx
        if ctx is None:
            core, key, method, request, deadline, metadata, credentials, wfr, compression, loop = self._args[:10]
            ctx = CallContext(core, key, method, request, None, metadata, credentials, wfr, compression, None, loop)
            ctx.deadline = deadline
            ctx.tried.append(self._first)
            self._ctx = ctx
        return ctx

    def _first_books(self, c: Any) -> None:
        """Close the books of the first attempt of a call from :func:`start_unary` (its
        picker gave no ``done``): grpc's done-callback, a bound method, not a closure
        made per RPC."""
        if aio_code_now(c) is _OK and books.observer is None:
            self._first.end()  # all that end_attempt would do
            return
        args = self._args
        end_unary_attempt(c, args[0], args[10], args[11], args[2])

    # -- running ----------------------------------------------------------------

    async def _run(self, first_error: grpc.aio.AioRpcError | None = None) -> None:
        """Drive the attempts to the end. ``first_error`` is how the first attempt
        (awaited by :meth:`__await__` itself) failed."""
        ctx = self._context()
        try:
            if ctx.hedged:
                await self._hedged()
                return
            if first_error is None and self._call is not None and ctx._att is None:
                # No policy and the first attempt already started. Only if it
                # fails is an Attempts value made.
                try:
                    self._response = await self._call
                    return
                except grpc.aio.AioRpcError as exc:
                    first_error = exc
            if first_error is not None:
                if not self._replayable:
                    raise ctx.real_error(self._call, first_error) from None
                delay = ctx.att.after_failure(first_error.code(), first_error.details(),
                                              first_error.trailing_metadata())
                if delay is None:
                    raise first_error
                if delay > 0:
                    await asyncio.sleep(delay)
                self._call = None
            att = ctx.att
            while True:
                if self._call is None:
                    pr = await ctx.pick()
                    self._call = ctx.start(pr)
                    if self._call is None:
                        if att.after_failure(_UNAVAILABLE, None, refused=True) is None:
                            raise aio_error(LocalRpcError(_UNAVAILABLE, ctx.core.explain(ctx.core.picker)))
                        continue
                try:
                    self._response = await self._call
                except grpc.aio.AioRpcError as exc:
                    if not self._replayable:
                        raise ctx.real_error(self._call, exc) from None
                    delay = att.after_failure(exc.code(), exc.details(), exc.trailing_metadata())
                    if delay is None:
                        raise
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._call = None
                    continue
                att.succeeded()
                return
        except LocalRpcError as exc:
            self._error = aio_error(exc)
        except grpc.aio.AioRpcError as exc:
            self._error = exc
        except asyncio.CancelledError:
            self._cancel_attempts()
            self._cancelled = True
            raise
        finally:
            self._finish()

    async def _hedged(self) -> None:
        self._call, self._response = await run_hedged(self._context(), self._call)

    def _cancel_attempts(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def _finish(self) -> None:
        self._done = True
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            cb(self)

    async def _wait(self) -> None:
        if self._done:
            return
        if not self._running:
            self._running = True
            await self._run()
            return
        # A second awaiter while the first drives the attempts.
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._outcome)

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._running and not self._done:
            # The first awaiter drives the attempts itself.
            self._running = True
            call = self._call
            ctx = self._ctx
            if call is not None and (ctx is None or ctx._att is None) and self._replayable:
                # The common case (no policy, the first attempt started): await
                # grpc's call right here, one coroutine less per RPC; anything
                # else continues in _run.
                try:
                    self._response = yield from call.__await__()
                except grpc.aio.AioRpcError as exc:
                    yield from self._run(exc).__await__()
                except asyncio.CancelledError:
                    self._cancel_attempts()
                    self._cancelled = True
                    self._finish()
                    raise
                except BaseException:
                    self._finish()
                    raise
                self._done = True
                if self._outcome is not None or self._callbacks:
                    self._finish()
            else:
                yield from self._run().__await__()
        else:
            yield from self._wait().__await__()
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._error is not None:
            raise self._error
        return self._response

    # -- grpc.aio.Call ------------------------------------------------------------

    async def _get(self, name: str) -> Any:
        with contextlib.suppress(asyncio.CancelledError):
            await self._wait()
        if self._cancelled:
            return {"code": _CANCELLED, "details": "Locally cancelled by application!"}.get(name)
        if self._error is not None:
            return getattr(self._error, name)()
        return await getattr(self._call, name)()

    async def wait_for_connection(self) -> None:
        await self._wait()

    async def _started(self) -> Any:
        # A stream-unary call driven by write(): its one attempt, started once picked.
        while self._call is None:
            ctx = self._context()
            self._call = ctx.start(await ctx.pick())
        return self._call

    async def write(self, request: Any) -> None:
        await (await self._started()).write(request)

    async def done_writing(self) -> None:
        await (await self._started()).done_writing()

    def cancel(self) -> bool:
        if self._done:
            return False
        self._cancelled = True
        self._cancel_attempts()
        if not self._running:
            self._finish()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def time_remaining(self) -> float | None:
        d = self._args[4] if self._ctx is None else self._ctx.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)


def start_unary(core: ChannelCore, key: CallableKey, method: str, request: Any, timeout: float | None,
                metadata: Metadata | None, credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                compression: grpc.Compression | None, loop: asyncio.AbstractEventLoop) -> AioUnaryCall:
    """A unary-unary RPC with no method config, on ``loop``: the common call, started
    without a :class:`CallContext` (made only if the first attempt fails).

    Anything else (no pick yet, a picker that wants the attempt's result, an
    observer, a backend closed under us) goes the general way, with the pick
    already made handed over.
    """
    pr = None
    if books.observer is None and not core.closed:
        try:
            pr = core.picker.pick(method, metadata)
        except Drop:
            pr = None  # the general path picks again and raises the drop
    if pr is None or pr.done is not None or not pr.subconn.backend.begin():
        ctx = CallContext(core, key, method, request, timeout, metadata, credentials, wait_for_ready, compression,
                          None, loop)
        return AioUnaryCall(ctx, True, pr)
    b = pr.subconn.backend
    t0 = time.perf_counter()
    deadline = None if timeout is None else time.monotonic() + timeout
    self = AioUnaryCall.__new__(AioUnaryCall)
    self._first = b
    self._args = (core, key, method, request, deadline, metadata, credentials, wait_for_ready, compression, loop, pr,
                  t0)
    try:
        twin = b.aio_twins.get(loop) or b.twin_for(loop)
        mcall = twin.callables.get(key) or twin.callable(key)
        # wait_for_ready is the channel's job, as in CallContext.start.
        call = mcall(request, timeout=timeout, metadata=metadata, credentials=credentials, wait_for_ready=None,
                     compression=compression)
    except BaseException:
        b.end()
        unused(pr)
        raise
    self._call = call
    call.add_done_callback(self._first_books)
    return self
