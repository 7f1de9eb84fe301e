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
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # in grpc.aio, not in its stubs

from .._calls import LocalRpcError
from .._grpc_compat import AIO_WRITE_RACE_DETAILS, aio_status_now
from ..attempts import Attempts, effective_deadline
from ..balancer import Drop, Metadata, PickResult
from ..methodconfig import MethodConfig
from .blocking import wait_for_ready_of
from .books import begin_attempt, end_attempt, unused

if TYPE_CHECKING:
    from .._futures import AioTwin
    from ..backend import Backend, CallableKey
    from ..core import ChannelCore

__all__ = ["AioStreamCall", "AioUnaryCall", "aio_error", "now"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_INTERNAL = grpc.StatusCode.INTERNAL
# Checks of the write race (discovery._grpc_compat): every millisecond, for at most 2 s.
_RACE_CHECKS = 2000

Status = tuple[grpc.StatusCode, str | None, Any]

TwinOf = Callable[["Backend"], "AioTwin"]


def now(coro: Any) -> Any:
    """The value of a coroutine that finishes without suspending (a done call's getters)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the call is not finished")


def aio_error(exc: LocalRpcError) -> grpc.aio.AioRpcError:
    """The channel's own failure as the error type grpc.aio callers catch."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(exc.code(), empty, empty, exc.details(), exc.details())


class _Ctx:
    """What every attempt of one call shares.

    The :class:`Attempts` value is made on first use (a policy, or a failed
    attempt): the common RPC with no method config never builds one.
    """

    __slots__ = ("_att", "arg", "compression", "core", "credentials", "deadline", "ended", "key", "mc", "metadata",
                 "method", "replay", "tried", "twin_of", "wfr")

    def __init__(self, core: ChannelCore, key: CallableKey, method: str, arg: Any, timeout: float | None,
                 metadata: Metadata | None, credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                 compression: grpc.Compression | None, mc: MethodConfig | None, twin_of: TwinOf) -> None:
        self.core = core
        self.key = key
        self.method = method
        self.arg = arg
        self.metadata = metadata
        self.credentials = credentials
        self.compression = compression
        self.twin_of = twin_of
        self.mc = mc
        self.deadline = None if timeout is None and mc is None else effective_deadline(timeout, mc, time.monotonic())
        self.wfr = wait_for_ready if mc is None else wait_for_ready_of(wait_for_ready, mc)
        self.tried: list[Any] = []
        self.replay = True
        # How each attempt of a request-streaming call ended, as its books saw it (by id of the
        # grpc.aio call); made for request streams only.
        self.ended: dict[int, Status] | None = None
        self._att: Attempts | None = None
        if mc is not None and (mc.retry is not None or mc.hedging is not None):
            self._att = self._new_attempts()

    def _new_attempts(self) -> Attempts:
        att = Attempts(self.mc, self.core.throttle, self.deadline, self.wfr, len(self.core.manager.backends) + 1)
        att.tried = self.tried
        return att if self.replay else att.no_replay()

    def no_replay(self) -> None:
        """A request stream: never replayed, so no retry or hedging policy applies to it.

        Hedging it would hand one iterator to several attempts (each getting part of
        the messages); retrying it would resend a partly consumed one.
        """
        self.replay = False
        self.ended = {}
        if self._att is not None:
            self._att.no_replay()

    @property
    def att(self) -> Attempts:
        if self._att is None:
            self._att = self._new_attempts()
        return self._att

    @property
    def hedged(self) -> bool:
        return self._att is not None and self._att.hedging is not None

    def pick_now(self) -> PickResult | None:
        """A pick without waiting, or None (a picker's drop then surfaces from :meth:`pick`)."""
        core = self.core
        if core.closed:
            return None
        try:
            if not self.tried:
                return core.picker.pick(self.method, self.metadata)
            return core.pick_avoiding(self.method, self.metadata, self.tried)
        except (Drop, LocalRpcError):
            return None

    async def pick(self) -> PickResult:
        r = self.pick_now()
        if r is None:
            r = await self.core.wait_pick_async(self.method, self.metadata, self.deadline, self.wfr, self.tried)
        return r

    def start(self, pr: PickResult) -> Any | None:
        """Begin and start one attempt on ``pr``; None if its backend closed under us."""
        b = pr.subconn.backend
        started = begin_attempt(self.core, pr, self.method, self._att)
        self.tried.append(b)
        if not started:
            unused(pr)
            return None
        t0 = time.perf_counter()
        if self._att is not None:
            timeout = self._att.attempt_timeout()
        else:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        try:
            mcall = self.twin_of(b).callable(self.key)
            call = mcall(self.arg, timeout=timeout, metadata=self.metadata,
                         credentials=self.credentials, wait_for_ready=False, compression=self.compression)
        except BaseException:
            b.end()
            unused(pr)
            raise
        core, method, ended = self.core, self.method, self.ended

        def close(c: Any, code: grpc.StatusCode, details: str | None, trailing: Any) -> None:
            if ended is not None:
                ended[id(c)] = (code, details, trailing)
            end_attempt(core, pr, t0, code, details, trailing, method)

        def books(c: Any) -> None:
            # The call is done, so its getters finish without suspending.
            if c.cancelled():
                end_attempt(core, pr, t0, _CANCELLED, "cancelled", (), method)
                return
            code = now(c.code())
            details = None if code is _OK else now(c.details())
            if ended is not None and code is _INTERNAL and details == AIO_WRITE_RACE_DETAILS:
                # grpc.aio's failed write ended the call early: the server's status is on its way.
                after_write_race(c, 0)
                return
            trailing = now(c.trailing_metadata()) if (code is not _OK or pr.done is not None) else ()
            close(c, code, details, trailing)

        def after_write_race(c: Any, checks: int) -> None:
            status = aio_status_now(c)
            if (status is not None and status[1] != AIO_WRITE_RACE_DETAILS) or checks >= _RACE_CHECKS:
                close(c, *(status or (_INTERNAL, AIO_WRITE_RACE_DETAILS, ())))
            else:
                asyncio.get_running_loop().call_later(0.001, after_write_race, c, checks + 1)

        call.add_done_callback(books)
        return call

    def real_error(self, call: Any, exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """``exc`` from an attempt of a request-streaming call, unless it is grpc.aio's write-race
        INTERNAL that overwrote the server's status (discovery._grpc_compat): then that status."""
        real = self.real_status(call, exc.code(), exc.details())
        if real is None:
            return exc
        code, details, trailing = real
        return grpc.aio.AioRpcError(code, exc.initial_metadata(), grpc.aio.Metadata(*trailing), details, None)

    def real_status(self, call: Any, code: grpc.StatusCode, details: str | None) -> Status | None:
        """The status the books saw for ``call``, if what the call says now is the write race's."""
        if code is not _INTERNAL or details != AIO_WRITE_RACE_DETAILS or self.ended is None:
            return None
        real = self.ended.get(id(call))
        return None if real is None or real[1] == AIO_WRITE_RACE_DETAILS else real


class AioUnaryCall(grpc.aio.UnaryUnaryCall[Any, Any], grpc.aio.StreamUnaryCall[Any, Any]):
    """A unary-response RPC over the channel's backends, as a grpc.aio call object.

    Awaiting it gives the response or raises :class:`grpc.aio.AioRpcError`;
    the metadata and status getters answer for the attempt that decided the
    RPC. Use it from its own event loop.
    """

    # grpc.aio's intercepted write() reads this off the call its interceptors
    # returned; under interceptors the call always gets a request iterator.
    _done_writing_flag = False

    def __init__(self, ctx: _Ctx, replayable: bool) -> None:
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
        """gRFC A6 hedging: a copy every ``hedgingDelay`` to an untried backend; the
        first success wins and the others are cancelled; a fatal status ends it."""
        ctx = self._ctx
        att = ctx.att
        assert att.hedging is not None
        delay = att.hedging.hedging_delay
        attempts: dict[asyncio.Future[Any], Any] = {}
        started = 0
        last_error: grpc.aio.AioRpcError | None = None

        async def one(call: Any) -> Any:
            return await call

        async def launch() -> None:
            nonlocal started
            pr = ctx.pick_now()
            if pr is not None and started and pr.subconn.backend in ctx.tried and attempts:
                # No backend left that no copy went to: the running ones go on.
                unused(pr)
                return
            if pr is None:
                if attempts:
                    return  # nothing pickable now; the running ones go on
                # Nothing in flight: wait for a backend as a first attempt would
                # (or fail fast), rather than spin until the deadline.
                pr = await ctx.pick()
            call = ctx.start(pr)
            if call is None:
                # Its backend closed under us: never sent, a bounded transparent re-pick.
                if att.after_failure(_UNAVAILABLE, None, refused=True) is None:
                    raise aio_error(LocalRpcError(_UNAVAILABLE, ctx.core.explain(ctx.core.picker)))
                return
            started += 1
            attempts[asyncio.ensure_future(one(call))] = call

        if self._call is not None:
            started = 1
            attempts[asyncio.ensure_future(one(self._call))] = self._call
        else:
            await launch()
        next_at = time.monotonic() + delay
        # A server's pushback (gRFC A6): no hedge before this time, even with nothing in flight.
        not_before = 0.0
        try:
            while True:
                may_hedge = att.may_hedge(started)
                if not attempts and not may_hedge:
                    if last_error is not None:
                        raise last_error
                    raise aio_error(LocalRpcError(_UNAVAILABLE, ctx.core.explain(ctx.core.picker)))
                now_ = time.monotonic()
                if not attempts:
                    next_at = max(now_, not_before)  # nothing in flight: the next hedge goes now
                wait = max(0.0, next_at - now_) if may_hedge else att.remaining()
                left = att.remaining()
                if wait is not None and left is not None:
                    wait = min(wait, left)
                done: set[asyncio.Future[Any]] = set()
                if attempts:
                    done, _ = await asyncio.wait(list(attempts), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                elif wait:
                    await asyncio.sleep(wait)
                if not done:
                    if att.may_hedge(started) and time.monotonic() >= next_at:
                        await launch()
                        next_at = time.monotonic() + delay
                    elif att.expired():
                        if last_error is not None:
                            raise last_error
                        raise aio_error(LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))
                    continue
                for t in done:
                    call = attempts.pop(t)
                    exc = t.exception()
                    if exc is None:
                        self._call = call
                        self._response = t.result()
                        att.succeeded()
                        return
                    if not isinstance(exc, grpc.aio.AioRpcError):
                        raise exc
                    last_error = exc
                    self._call = call
                    fatal, pushback = att.hedge_failed(exc.code(), exc.trailing_metadata())
                    if fatal:
                        raise exc
                    if pushback is not None:
                        if pushback < 0:
                            att.hedging = None  # the server asked for no more hedges
                        else:
                            not_before = next_at = time.monotonic() + pushback
        finally:
            for t, call in attempts.items():
                call.cancel()
                t.cancel()

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


class AioStreamCall(grpc.aio.UnaryStreamCall[Any, Any], grpc.aio.StreamStreamCall[Any, Any]):
    """A streaming-response RPC as a grpc.aio call object.

    A unary request is replayed on another backend (transparent re-pick or
    ``retryPolicy``) until the first response message arrives; after that
    the stream is committed to its backend. A request stream is never
    replayed.
    """

    _done_writing_flag = False  # as AioUnaryCall

    def __init__(self, ctx: _Ctx, replayable: bool) -> None:
        self._ctx = ctx
        self._replayable = replayable
        if not replayable:
            ctx.no_replay()
        self._call: Any = None
        self._committed = not replayable
        self._ready: asyncio.Future[Any] | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._cancelled = False
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

    async def initial_metadata(self) -> Any:
        return await self._get("initial_metadata")

    async def trailing_metadata(self) -> Any:
        return await self._get("trailing_metadata")

    async def code(self) -> grpc.StatusCode:
        return await self._get("code")  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._get("details")  # type: ignore[no-any-return]

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
        if self._call is not None:
            self._call.add_done_callback(lambda _c: callback(self))
        else:
            callback(self) if self._error is not None else None


def make_ctx(core: ChannelCore, key: CallableKey, method: str, arg: Any, timeout: float | None,
             metadata: Metadata | None, credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
             compression: grpc.Compression | None, mc: MethodConfig | None, twin_of: TwinOf) -> _Ctx:
    return _Ctx(core, key, method, arg, timeout, metadata, credentials, wait_for_ready, compression, mc, twin_of)
