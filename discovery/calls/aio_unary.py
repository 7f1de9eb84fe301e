"""An asyncio unary-response RPC (unary-unary, stream-unary) over the channel's backends.

:class:`AioUnaryCall` is a grpc.aio call object whose attempts follow every
rule of :mod:`discovery.attempts`. The first attempt starts eagerly when the
call object is made, as grpc.aio starts its calls; later attempts
(re-picks, retries, hedges) run while the call is awaited. No Task is made
per RPC unless it hedges. Each attempt's books close from the grpc.aio
call's own done-callback, so accounting never depends on anyone awaiting.
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
from .._grpc_compat import AIO_EOF, AIO_STATUS_OK, aio_code_now
from ..balancer import PickResult
from . import books
from .books import deadline_after
from .context import CallContext, StatusGetters, abandon, aio_error, end_unary_attempt
from .hedging import run_hedged

__all__ = ["AioUnaryCall"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# Tasks driving calls that nobody awaits but that have done-callbacks.
_DRIVERS: set[asyncio.Task[None]] = set()


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
    # A call started by UnaryStart: its first backend, and what a CallContext and
    # the first attempt's books need (see UnaryStart).
    _first: Any = None
    _args: tuple[Any, ...] = ()
    # The first attempt of a call from UnaryStart until something drives it.
    _first_call: Any = None

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
        :class:`UnaryStart` needs one only if its first attempt fails)."""
        ctx = self._ctx
        if ctx is None:
            start, request, timeout, metadata, credentials, wfr, compression, loop, _, t0 = self._args[:10]
            ctx = CallContext(start._core, start._key, start._method, request, None, metadata, credentials, wfr,
                              compression, None, loop)
            ctx.deadline = deadline_after(timeout, t0)
            ctx.tried.append(self._first)
            self._ctx = ctx
        return ctx

    def _first_done(self, *_: Any) -> None:
        """Close the books of the first attempt of a call from :class:`UnaryStart` (its
        picker gave no ``done``). grpc's done-callback, a bound method, not a closure made
        per RPC; registered on grpc's C-level call where there is one, which calls it
        with no argument (see :mod:`discovery._grpc_compat`, "grpc.aio's unary calls")."""
        args = self._args
        call = args[10]
        args[11].discard(call)
        try:
            ok = call._cython_call._status.code() == AIO_STATUS_OK
        except AttributeError:  # a call object that is not grpc's own
            ok = aio_code_now(call) is _OK
        if ok and books.observer is None:
            # All that end_attempt would do: Backend.end, written out.
            b = self._first
            b.tokens.pop()
            if b.closing:
                b.check_idle()
            return
        start = args[0]
        end_unary_attempt(call, start._core, args[8], args[9], start._method)

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
        except BaseException:
            abandon(self._call)
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
        self._first_call = None  # driven here, not by __await__'s fast path
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
        call = self._first_call
        if call is None:
            if self._running or self._done:
                yield from self._wait().__await__()
                return self._result()
            c, ctx = self._call, self._ctx
            if c is None or ctx is None or ctx._att is not None or not self._replayable:
                # The first awaiter drives the attempts itself.
                self._running = True
                yield from self._run().__await__()
                return self._result()
            call = c
        else:
            self._first_call = None
        # The common case: no policy, the first attempt started (always, for
        # a call from UnaryStart) and nothing else drove the call yet. Await
        # grpc's response task right here (one coroutine and one generator
        # less per RPC); a failed attempt continues in _run.
        self._running = True
        try:
            try:
                task = call._call_response
            except AttributeError:  # a call object that is not grpc's own
                task = call.__await__()
            # A Task is its own iterator (Future.__iter__ is __await__).
            response = yield from task
            if response is AIO_EOF:
                # The attempt failed or was cancelled: grpc's own await
                # raises what it would (the task is done, so at once).
                yield from call.__await__()
        except grpc.aio.AioRpcError as exc:
            yield from self._run(exc).__await__()
            return self._result()
        except asyncio.CancelledError:
            self._cancel_attempts()
            self._cancelled = True
            self._finish()
            raise
        except BaseException:
            abandon(call)
            self._finish()
            raise
        self._response = response
        self._done = True
        if self._callbacks is not None or self._outcome is not None:
            self._finish()
        if self._cancelled:
            raise asyncio.CancelledError()
        return response

    def _result(self) -> Any:
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
        self._first_call = None
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
        d = deadline_after(self._args[2], self._args[9]) if self._ctx is None else self._ctx.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(self)`` once the RPC ends, as grpc.aio does: whether or not
        anyone awaits the call (then a task of the channel's drives its attempts)."""
        if self._done:
            callback(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)
        if not self._running:
            task = asyncio.ensure_future(self._drive())
            _DRIVERS.add(task)  # held until done: asyncio keeps only weak references to tasks
            task.add_done_callback(_DRIVERS.discard)

    async def _drive(self) -> None:
        # The outcome is kept on the call (its getters and awaiters read it).
        with contextlib.suppress(asyncio.CancelledError):
            await self._wait()
