"""The data plane's side of the channel core: picking, and waiting for a pick.

:class:`PickWaits` is a mixin of :class:`~discovery.core.ChannelCore`. An RPC
reads the current picker without a lock; only when nothing can be picked does
it wait, on the core's condition (blocking calls) or on a future the control
thread resolves on the RPC's own loop (asyncio and futures), never past its
deadline. Nothing here runs on the control thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import grpc

from ._calls import LocalRpcError
from .balancer import Drop, Metadata, Picker, PickResult
from .calls.books import dropped, unused

if TYPE_CHECKING:
    from .backend import Backend
    from .manager import SubchannelManager

__all__ = ["PickWaits", "wake_all"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class PickWaits:
    """Picking for RPCs, on any thread. The attributes are the core's."""

    target: str
    picker: Picker
    cond: threading.Condition
    closed: bool
    manager: SubchannelManager
    resolver_note: str
    resolver_error: str
    conn_error: str
    _async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]

    def recheck(self, backend: Backend) -> None:
        raise NotImplementedError

    def explain(self, picker: Picker, reason: str | None = None) -> str:
        """The details of an RPC nothing could be picked for; ``reason`` is the picker's
        answer for that RPC (:meth:`Picker.why_none`), else its general one."""
        reason = picker.reason if reason is None else reason
        parts = [f"no backend available for {self.target}: {reason}"]
        if self.resolver_note:
            parts.append(self.resolver_note)
        if self.resolver_error:
            parts.append(f"last resolver error: {self.resolver_error}")
        if "last connection error" not in reason:
            # The picker's reason was written when it was built; a connection
            # error learned since (an asyncio backend's probe) is told here.
            errors = [f"{b.addr}: {b.last_error}" for b in self.manager.backends if b.last_error]
            last = errors[-1] if errors else self.conn_error
            if last:
                parts.append(f"last connection error: {last}")
        return "; ".join(parts)

    def no_pick_error(self, picker: Picker, deadline_passed: bool, reason: str | None = None) -> LocalRpcError:
        if self.closed:
            return LocalRpcError(grpc.StatusCode.CANCELLED, "the channel is closed")
        if deadline_passed:
            return LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 "deadline exceeded while waiting for a backend: " + self.explain(picker, reason))
        return LocalRpcError(_UNAVAILABLE, self.explain(picker, reason))

    def pick_avoiding(self, method: str, metadata: Metadata | None, tried: list[Any]) -> PickResult | None:
        """A pick whose backend is not in ``tried`` when the picker offers one (at most
        len(tried)+1 picks), else the last pick; None if nothing can be picked. Never blocks."""
        picker = self.picker
        try:
            r = picker.pick(method, metadata)
            if not tried or r is None:
                return r
            for _ in range(len(tried)):
                if r is None or r.subconn.backend not in tried:
                    break
                unused(r)  # a pick that is not taken still gets its done (a reservation is released)
                r = picker.pick(method, metadata)
        except Drop as drop:
            raise dropped(drop) from None
        return r

    def wait_pick(self, method: str, metadata: Metadata | None, deadline: float | None,
                  wait_for_ready: bool | None, tried: list[Any] | None = None) -> PickResult:
        """Block until a backend can be picked, or raise the RPC's :class:`LocalRpcError`.

        Fail-fast RPCs wait only while the channel is still connecting
        (``picker.queue``); ``wait_for_ready`` ones until the deadline.
        """
        with self.cond:
            while True:
                if self.closed:
                    # What grpcio raises for an RPC on a closed sync channel.
                    raise ValueError("Cannot invoke RPC on closed channel!")
                r, remaining = self._pick_or_wait(method, metadata, deadline, wait_for_ready, tried)
                if r is not None:
                    return r
                self.cond.wait(remaining)

    def _pick_or_wait(self, method: str, metadata: Metadata | None, deadline: float | None,
                      wait_for_ready: bool | None, tried: list[Any] | None) -> tuple[PickResult | None, float | None]:
        """Under :attr:`cond`: a pick, or (None, how long to wait for the next picker);
        raises the RPC's error when it must not wait (fail-fast, deadline, closed)."""
        picker = self.picker
        r = self.pick_avoiding(method, metadata, tried or [])
        if r is not None and not self.closed:
            return r, None
        remaining = None if deadline is None else deadline - time.monotonic()
        # Whether this RPC waits, and why it failed, can depend on the RPC
        # (the subset its header asks for): the picker says, per RPC.
        queue, reason = picker.why_none(method, metadata)
        if self.closed or (not queue and not wait_for_ready) or (remaining is not None and remaining <= 0):
            raise self.no_pick_error(picker, remaining is not None and remaining <= 0, reason)
        return None, remaining

    async def wait_pick_async(self, method: str, metadata: Metadata | None, deadline: float | None,
                              wait_for_ready: bool | None, tried: list[Any] | None = None) -> PickResult:
        """:meth:`wait_pick` for asyncio: awaits the next picker, never blocks the loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self.cond:
                r, remaining = self._pick_or_wait(method, metadata, deadline, wait_for_ready, tried)
                if r is not None:
                    return r
                fut: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, fut))
            # A timer of our own rather than asyncio.wait_for: the futures loop
            # drives these coroutines without a Task, which wait_for needs on 3.12+.
            timer = None if remaining is None else loop.call_later(remaining, _wake, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()

    def attempt_failed(self, backend: Backend, code: grpc.StatusCode | None, details: str | None) -> None:
        """Close the books on an attempt that failed on ``backend``. Any thread.

        After UNAVAILABLE: remember the error for fail-fast messages and re-read
        the backend's connectivity at once.
        """
        if code is _UNAVAILABLE:
            backend.last_error = details or ""
            self.conn_error = f"{backend.addr}: {details}"
            self.recheck(backend)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, fut in waiters:
        # A closed loop has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_wake, fut)
