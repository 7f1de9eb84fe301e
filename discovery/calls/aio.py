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
from typing import Any

import grpc
import grpc.aio

from .._calls import LocalRpcError
from .aio_stream import AioStreamCall
from .context import CallContext, aio_error, make_ctx, now
from .hedging import run_hedged

__all__ = ["AioStreamCall", "AioUnaryCall", "CallContext", "aio_error", "make_ctx", "now"]

_CANCELLED = grpc.StatusCode.CANCELLED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class AioUnaryCall(grpc.aio.UnaryUnaryCall[Any, Any], grpc.aio.StreamUnaryCall[Any, Any]):
    """A unary-response RPC over the channel's backends, as a grpc.aio call object.

    Awaiting it gives the response or raises :class:`grpc.aio.AioRpcError`;
    the metadata and status getters answer for the attempt that decided the
    RPC. Use it from its own event loop.
    """

    # grpc.aio's intercepted write() reads this off the call its interceptors
    # returned; under interceptors the call always gets a request iterator.
    _done_writing_flag = False

    def __init__(self, ctx: CallContext, replayable: bool) -> None:
        self._ctx = ctx
        self._replayable = replayable
        if not replayable:
            ctx.no_replay()
        self._call: Any = None  # the current (at the end: the deciding) attempt
        self._error: grpc.aio.AioRpcError | None = None
        self._response: Any = None
        self._done = False
        self._cancelled = False
        self._outcome: asyncio.Future[None] | None = None
        self._running = False
        self._callbacks: list[Callable[[Any], None]] = []
        pr = ctx.pick_now()
        if pr is not None:
            self._call = ctx.start(pr)

    # -- running ----------------------------------------------------------------

    async def _run(self) -> None:
        ctx = self._ctx
        try:
            if ctx.hedged:
                await self._hedged()
                return
            if self._call is not None and ctx._att is None:
                # The common case: no policy and the first attempt already
                # started. Only if it fails is an Attempts value made.
                try:
                    self._response = await self._call
                    return
                except grpc.aio.AioRpcError as exc:
                    if not self._replayable:
                        raise ctx.real_error(self._call, exc) from None
                    delay = ctx.att.after_failure(exc.code(), exc.details(), exc.trailing_metadata())
                    if delay is None:
                        raise
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
        self._call, self._response = await run_hedged(self._ctx, self._call)

    def _cancel_attempts(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def _finish(self) -> None:
        self._done = True
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
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
            # The first awaiter drives the attempts itself: one frame less per step.
            self._running = True
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

    async def initial_metadata(self) -> Any:
        return await self._get("initial_metadata")

    async def trailing_metadata(self) -> Any:
        return await self._get("trailing_metadata")

    async def code(self) -> grpc.StatusCode:
        return await self._get("code")  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._get("details")  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        await self._wait()

    async def _started(self) -> Any:
        # A stream-unary call driven by write(): its one attempt, started once picked.
        while self._call is None:
            self._call = self._ctx.start(await self._ctx.pick())
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
        d = self._ctx.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)
