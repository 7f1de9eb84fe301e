"""Out-of-band streams a policy opens to one backend (:meth:`BalancerHelper.open_stream`).

A policy such as ``weighted_round_robin`` needs a long-lived server stream
to each backend (ORCA's ``OpenRcaService/StreamCoreMetrics``) that is not an
RPC of the channel: it bypasses the picker and the in-flight books. A thread
per stream would not scale to thousands of backends, so the stream runs as a
grpc.aio call on an event loop: the application's loop for an asyncio
channel (on the backend's one grpc.aio channel), the shared futures loop for
a sync channel (on the backend's grpc.aio twin, the one ``.future()`` calls
use). Messages and the end are handed to the control thread, so the policy
needs no lock for its own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from ._futures import shared_loop

if TYPE_CHECKING:
    from .backend import Backend
    from .control import ControlLoop

__all__ = ["BackendStream"]

log = logging.getLogger("discovery.channel")


def _identity(b: bytes) -> bytes:
    return b


class BackendStream:
    """One server-streaming call to one backend; :meth:`cancel` from any thread."""

    __slots__ = ("_call", "_control", "_loop", "_on_end", "_on_message", "_over", "_task")

    def __init__(self, control: ControlLoop, on_message: Callable[[bytes], None],
                 on_end: Callable[[grpc.StatusCode, str], None]) -> None:
        self._control = control
        self._on_message = on_message
        self._on_end = on_end
        self._over = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._call: Any = None
        self._task: asyncio.Future[None] | None = None

    @classmethod
    def start(cls, control: ControlLoop, backend: Backend, aio_loop: asyncio.AbstractEventLoop | None,
              method: str, request: bytes, on_message: Callable[[bytes], None],
              on_end: Callable[[grpc.StatusCode, str], None]) -> BackendStream:
        """Open the stream on the right loop for ``backend``; never blocks."""
        s = cls(control, on_message, on_end)
        if backend.channel is not None:
            loop = shared_loop().loop  # a sync channel: the backend's twin on the futures loop
        elif aio_loop is not None:
            loop = aio_loop
        else:
            # An asyncio channel that has not seen its loop yet has no connected
            # backend either; the policy opens streams on READY backends only.
            control.submit(lambda: s._end(grpc.StatusCode.UNAVAILABLE, "the channel's event loop is not known yet"))
            return s
        s._loop = loop
        try:
            loop.call_soon_threadsafe(s._begin, backend, loop, method, request)
        except RuntimeError:  # the loop is closed: so is the channel
            control.submit(lambda: s._end(grpc.StatusCode.CANCELLED, "event loop closed"))
        return s

    def _begin(self, backend: Backend, loop: asyncio.AbstractEventLoop, method: str, request: bytes) -> None:
        # On the loop's thread.
        if self._over:
            return
        if backend.closed:
            self._control.submit(lambda: self._end(grpc.StatusCode.CANCELLED, "backend closed"))
            return
        self._task = asyncio.ensure_future(self._run(backend, loop, method, request), loop=loop)

    async def _run(self, backend: Backend, loop: asyncio.AbstractEventLoop, method: str, request: bytes) -> None:
        code, details = grpc.StatusCode.OK, ""
        try:
            twin = backend.twin_for(loop)
            mc = twin.channel.unary_stream(method, _identity, _identity)
            self._call = call = mc(request)
            async for msg in call:
                if self._over:
                    return
                self._control.submit(functools.partial(self._message, msg))
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a closed channel and the like: the stream ends, the policy retries
            code, details = grpc.StatusCode.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
        self._control.submit(lambda: self._end(code, details))

    def _message(self, msg: bytes) -> None:
        if self._over:
            return
        try:
            self._on_message(msg)
        except Exception:
            log.exception("out-of-band stream message handler %r failed", self._on_message)

    def _end(self, code: grpc.StatusCode, details: str) -> None:
        if self._over:
            return
        self._over = True  # on_end runs once
        self._on_end(code, details)

    def cancel(self) -> None:
        """Stop the stream; no callback runs afterwards (when called on the control thread)."""
        if self._over:
            return
        self._over = True
        loop = self._loop
        if loop is None:
            return

        def stop() -> None:
            if self._call is not None:
                self._call.cancel()
            if self._task is not None:
                self._task.cancel()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop)
