"""Streaming-response calls (unary-stream, stream-stream) as grpc.aio call objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # in grpc.aio, not in its stubs

from .._calls import LocalRpcError
from .books import unused
from .context import CallContext, StatusGetters, abandon, aio_error

__all__ = ["AioStreamCall"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# Tasks starting calls that nobody reads yet but that have done-callbacks.
_STARTERS: set[asyncio.Task[None]] = set()


class AioStreamCall(StatusGetters, grpc.aio.UnaryStreamCall[Any, Any], grpc.aio.StreamStreamCall[Any, Any]):
    """A streaming-response RPC as a grpc.aio call object.

    A unary request is replayed on another backend (transparent re-pick or
    ``retryPolicy``) until the first response message arrives; after that
    the stream is committed to its backend. A request stream is never
    replayed.
    """

    _done_writing_flag = False  # as AioUnaryCall

    def __init__(self, ctx: CallContext, replayable: bool) -> None:
        self._ctx = ctx
        self._replayable = replayable
        if not replayable:
            ctx.no_replay()
        self._call: Any = None
        self._committed = not replayable
        self._ready: asyncio.Future[Any] | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._cancelled = False
        self._pending: list[Callable[[Any], None]] | None = None
        pr = ctx.pick_now()
        if pr is not None:
            self._call = ctx.start(pr)

    async def _current(self) -> Any:
        ctx = self._ctx
        while self._call is None:
            if self._cancelled:
                raise asyncio.CancelledError()
            try:
                pr = await ctx.pick()
            except LocalRpcError as exc:
                self._error = aio_error(exc)
                raise self._error from None
            if self._call is not None:
                # Another caller (a read, a getter, the done-callbacks' starter)
                # started the attempt while this one waited for its pick.
                unused(pr)
                break
            self._call = ctx.start(pr)
            if self._call is None and ctx.att.after_failure(_UNAVAILABLE, None, refused=True) is None:
                self._error = aio_error(LocalRpcError(_UNAVAILABLE, ctx.core.explain(ctx.core.picker)))
                raise self._error
        return self._call

    async def _restart_after(self, exc: grpc.aio.AioRpcError) -> bool:
        """Whether to go again on another backend after ``exc`` before the first message."""
        if self._committed or self._cancelled:
            return False
        delay = self._ctx.att.after_failure(exc.code(), exc.details(), exc.trailing_metadata())
        if delay is None:
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        self._call = None
        return True

    async def read(self) -> Any:
        while True:
            call = await self._current()
            try:
                msg = await call.read()
            except grpc.aio.AioRpcError as exc:
                exc = self._ctx.real_error(call, exc)
                if await self._restart_after(exc):
                    continue
                raise exc from None
            except asyncio.CancelledError:
                raise
            except BaseException:
                abandon(call)
                raise
            if msg is EOF and not self._committed:
                code = await call.code()
                if code is not _OK:
                    err = grpc.aio.AioRpcError(code, await call.initial_metadata(), await call.trailing_metadata(),
                                               await call.details(), None)
                    if await self._restart_after(err):
                        continue
            self._committed = True
            return msg

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            msg = await self.read()
            if msg is EOF:
                code = await self.code()
                if code is not _OK:
                    raise grpc.aio.AioRpcError(code, await self.initial_metadata(), await self.trailing_metadata(),
                                               await self.details(), None)
                return
            yield msg

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def write(self, request: Any) -> None:
        await (await self._current()).write(request)

    async def done_writing(self) -> None:
        await (await self._current()).done_writing()

    async def wait_for_connection(self) -> None:
        await (await self._current()).wait_for_connection()

    async def _get(self, name: str) -> Any:
        try:
            call = await self._current()
        except grpc.aio.AioRpcError as exc:
            return getattr(exc, name)()
        except asyncio.CancelledError:
            return {"code": _CANCELLED, "details": "Locally cancelled by application!"}.get(name)
        if name != "initial_metadata" and self._ctx.ended is not None:
            real = self._ctx.real_status(call, await call.code(), await call.details())
            if real is not None:  # grpc.aio's write race overwrote the server's status
                code, details, trailing = real
                return {"code": code, "details": details, "trailing_metadata": grpc.aio.Metadata(*trailing)}[name]
        return await getattr(call, name)()

    def cancel(self) -> bool:
        self._cancelled = True
        self._committed = True
        if self._call is not None:
            return bool(self._call.cancel())
        return True

    def cancelled(self) -> bool:
        return self._cancelled or (self._call is not None and bool(self._call.cancelled()))

    def done(self) -> bool:
        return self._error is not None or (self._call is not None and bool(self._call.done()))

    def time_remaining(self) -> float | None:
        d = self._ctx.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(self)`` when the current attempt ends (or at once if the RPC
        failed before one started). With no attempt started yet (waiting for a
        backend), a task of the channel's picks and starts it, as grpc.aio starts
        a call whether or not anyone reads it. (As with grpc.aio, a stream nobody
        reads does not end until its deadline: its status waits behind its messages.)"""
        if self._call is not None:
            self._call.add_done_callback(lambda _c: callback(self))
            return
        if self._error is not None or self._cancelled:
            callback(self)
            return
        if self._pending is None:
            self._pending = []
            task = asyncio.ensure_future(self._start_for_callbacks())
            _STARTERS.add(task)  # held until done: asyncio keeps only weak references to tasks
            task.add_done_callback(_STARTERS.discard)
        self._pending.append(callback)

    async def _start_for_callbacks(self) -> None:
        try:
            call = await self._current()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            call = None
        pending, self._pending = self._pending or [], None
        for cb in pending:
            if call is not None:
                call.add_done_callback(lambda _c, cb=cb: cb(self))
            else:
                cb(self)
