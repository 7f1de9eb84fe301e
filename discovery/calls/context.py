"""What every attempt of one call shares: the :class:`CallContext` of the asyncio drivers.

It picks (avoiding backends already tried), begins and starts one grpc.aio
attempt and closes its books from the call's own done-callback, so accounting
never depends on anyone awaiting. :mod:`.aio` (unary responses),
:mod:`.aio_stream` (streaming responses) and :mod:`.hedging` drive it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._calls import LocalRpcError
from .._grpc_compat import AIO_WRITE_RACE_DETAILS, aio_code_now, aio_status_now, now
from ..attempts import Attempts, effective_deadline
from ..balancer import Drop, Metadata, PickResult
from ..methodconfig import MethodConfig
from . import books
from .blocking import wait_for_ready_of
from .books import begin_attempt, end_attempt, unused

if TYPE_CHECKING:
    from ..backend import CallableKey
    from ..core import ChannelCore

__all__ = ["CallContext", "Status", "StatusGetters", "aio_error", "end_unary_attempt", "unary_books"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_INTERNAL = grpc.StatusCode.INTERNAL
# Checks of the write race (discovery._grpc_compat): every millisecond, for at most 2 s.
_RACE_CHECKS = 2000

Status = tuple[grpc.StatusCode, str | None, Any]


def attempt_status(c: Any, pr: PickResult) -> Status:
    """The status of the done grpc.aio call ``c``, read without awaiting; trailing
    metadata only where someone reads it."""
    code = aio_code_now(c)
    details = None if code is _OK else now(c.details())
    trailing = now(c.trailing_metadata()) if (code is not _OK or pr.done is not None) else ()
    return code, details, trailing


def unary_books(core: ChannelCore, pr: PickResult, t0: float, method: str) -> Callable[[Any], None]:
    """The done-callback that closes the books of an attempt with a unary request
    (one closure per attempt: this runs for every RPC)."""
    b = pr.subconn.backend

    def close_books(c: Any) -> None:
        if pr.done is None and aio_code_now(c) is _OK and books.observer is None:
            b.end()  # all that end_attempt would do
        else:
            end_unary_attempt(c, core, pr, t0, method)

    return close_books


def end_unary_attempt(c: Any, core: ChannelCore, pr: PickResult, t0: float, method: str) -> None:
    """Close the books of the done grpc.aio call ``c``, an attempt with a unary request,
    in full (the done-callbacks check the common OK case themselves first)."""
    if c.cancelled():
        end_attempt(core, pr, t0, _CANCELLED, "cancelled", (), method)
    else:
        end_attempt(core, pr, t0, *attempt_status(c, pr), method)


def abandon(call: Any) -> None:
    """A grpc.aio attempt raised something that is not an RPC outcome: grpc.aio refused
    its metadata or request locally (a ``TypeError``, grpc's ``ExecuteBatchError``...)
    and leaves such a call running forever, never done. Cancel it, so that it ends,
    its done-callbacks close its books, and grpc's channel forgets it; the caller
    then sees the exception as grpc.aio raised it. Loop thread."""
    if call is not None:
        call.cancel()


def aio_error(exc: LocalRpcError) -> grpc.aio.AioRpcError:
    """The channel's own failure as the error type grpc.aio callers catch."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(exc.code(), empty, empty, exc.details(), exc.details())


class StatusGetters:
    """grpc.aio.Call's four status getters over the call's own ``_get(name)``."""

    async def _get(self, name: str) -> Any:
        raise NotImplementedError

    async def initial_metadata(self) -> Any:
        return await self._get("initial_metadata")

    async def trailing_metadata(self) -> Any:
        return await self._get("trailing_metadata")

    async def code(self) -> grpc.StatusCode:
        return await self._get("code")  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._get("details")  # type: ignore[no-any-return]


class CallContext:
    """What every attempt of one call shares.

    The :class:`Attempts` value is made on first use (a policy, or a failed
    attempt): the common RPC with no method config never builds one.
    """

    __slots__ = ("_att", "arg", "compression", "core", "credentials", "deadline", "ended", "key", "loop", "mc",
                 "metadata", "method", "replay", "tried", "wfr")

    def __init__(self, core: ChannelCore, key: CallableKey, method: str, arg: Any, timeout: float | None,
                 metadata: Metadata | None, credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                 compression: grpc.Compression | None, mc: MethodConfig | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.key = key
        self.method = method
        self.arg = arg
        self.metadata = metadata
        self.credentials = credentials
        self.compression = compression
        # Attempts go to each backend's grpc.aio channel on this loop.
        self.loop = loop
        self.mc = mc
        if mc is None:
            self.deadline = None if timeout is None else time.monotonic() + timeout
            self.wfr = wait_for_ready
        else:
            self.deadline = effective_deadline(timeout, mc, time.monotonic())
            self.wfr = wait_for_ready_of(wait_for_ready, mc)
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
        started = b.begin() if books.observer is None else begin_attempt(self.core, pr, self.method, self._att)
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
            twin = b.aio_twins.get(self.loop) or b.twin_for(self.loop)
            mcall = twin.callables.get(self.key) or twin.callable(self.key)
            # wait_for_ready is the channel's job (no backend channel's service
            # config sets it), as for blocking calls.
            call = mcall(self.arg, timeout=timeout, metadata=self.metadata,
                         credentials=self.credentials, wait_for_ready=None, compression=self.compression)
        except BaseException:
            b.end()
            unused(pr)
            raise
        core, method, ended = self.core, self.method, self.ended

        if ended is None:
            call.add_done_callback(unary_books(core, pr, t0, method))
            return call

        def close(c: Any, code: grpc.StatusCode, details: str | None, trailing: Any) -> None:
            ended[id(c)] = (code, details, trailing)
            end_attempt(core, pr, t0, code, details, trailing, method)

        def stream_books(c: Any) -> None:
            if c.cancelled():
                end_attempt(core, pr, t0, _CANCELLED, "cancelled", (), method)
                return
            code, details, trailing = attempt_status(c, pr)
            if code is _INTERNAL and details == AIO_WRITE_RACE_DETAILS:
                # grpc.aio's failed write ended the call early: the server's status is on its way.
                after_write_race(c, 0)
                return
            close(c, code, details, trailing)

        def after_write_race(c: Any, checks: int) -> None:
            status = aio_status_now(c)
            if (status is not None and status[1] != AIO_WRITE_RACE_DETAILS) or checks >= _RACE_CHECKS:
                close(c, *(status or (_INTERNAL, AIO_WRITE_RACE_DETAILS, ())))
            else:
                asyncio.get_running_loop().call_later(0.001, after_write_race, c, checks + 1)

        call.add_done_callback(stream_books)
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
