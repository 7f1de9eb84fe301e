"""``.future()`` for unary calls: grpc.aio calls on one shared event-loop thread.

Why not grpc's own ``.future()`` on the backend channel: a sync grpc channel
completes futures and streams on a per-channel polling thread that it starts
when the channel's count of such calls leaves zero and ends when it returns
to zero. With one channel per backend, almost every ``.future()`` started and
ended a thread: 2.0-2.6x the client CPU of grpcio's native round_robin
(``python -m bench futures``). grpc offers no way for one thread to serve
several sync channels.

grpc.aio channels all complete on one process-wide completion queue, so each
backend gets a grpc.aio twin channel (made on first use) and every
``.future()`` runs on ONE background loop per process: 0.98-1.19x of
grpcio's native future at 10-1,000 backends, 2 threads in total, no thread
start per RPC. The price is a second HTTP/2 connection for each backend that
serves futures (grpc does not share a connection between a sync and an aio
channel). Blocking calls stay on the sync channel (through the loop they
would cost ~1.9x). The alternatives measured are in ``bench/RESULTS.md``.

Threading rules
---------------
- Done-callbacks (``add_done_callback``, ``add_callback``) run on the loop
  thread, or at once on the caller's thread if the RPC is already over. They
  must not block: ``result()``/``exception()``/``code()``... called on the
  loop thread for an unfinished future raise RuntimeError instead of
  deadlocking. (grpcio's native callbacks run on the channel's polling
  thread with the same rule.)
- Everything else on :class:`BridgedFuture` is safe from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from ._calls import LocalRpcError
from ._grpc_compat import hand_over_calls, now
from ._requests import RequestsOffLoop

__all__ = ["AioTwin", "BridgedFuture", "FutureLoop", "future_on_loop", "shared_loop"]

log = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_CANCELLED_DETAILS = "Locally cancelled by application!"

CallableKey = tuple[str, str, Any, Any, bool]  # as in discovery.backend


class FutureLoop:
    """One daemon thread running an asyncio loop for discovery's futures.

    :meth:`submit` is safe from any thread and never blocks. Submissions are
    appended to a deque; only the first one after the loop drained the deque
    wakes the loop (``call_soon_threadsafe`` writes to a self-pipe), so a
    busy client pays one wake-up per batch, not per RPC.
    """

    def __init__(self, name: str = "discovery-futures") -> None:
        self.loop = asyncio.new_event_loop()
        self._pending: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        # True while a drain is scheduled and has not started emptying the deque.
        # Read and written without a lock: appending BEFORE reading it, and the
        # drain clearing it BEFORE emptying, means no submission is stranded
        # (at worst a drain finds nothing to do).
        self._scheduled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread soon, in submission order."""
        self._pending.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        pop = self._pending.popleft
        while True:
            try:
                fn, args = pop()
            except IndexError:
                return
            try:
                fn(*args)
            except Exception:  # one bad submission must not stop the others
                log.exception("discovery future loop: %r failed", fn)


_shared: FutureLoop | None = None
_shared_lock = threading.Lock()


def shared_loop() -> FutureLoop:
    """The process-wide :class:`FutureLoop` (started on first use)."""
    global _shared
    loop = _shared
    if loop is None:
        with _shared_lock:
            if _shared is None:
                _shared = FutureLoop()
            loop = _shared
    return loop


def _forget_after_fork() -> None:
    # The loop thread does not exist in a fork child; a new one starts on use.
    global _shared
    _shared = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class AioTwin:
    """A backend's grpc.aio channel plus its multicallables (as their bound ``__call__``). Loop thread only."""

    __slots__ = ("active", "callables", "channel")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.callables: dict[CallableKey, Any] = {}
        # Calls started without grpc's multicallable (see _grpc_compat.aio_unary_parts),
        # until done: grpc's channel does not know them until close hands them over.
        self.active: set[Any] = set()

    def callable(self, key: CallableKey) -> Any:
        mc = self.callables.get(key)
        if mc is None:
            kind, method, ser, deser, registered = key
            # The bound __call__, not the multicallable: a call with keywords
            # (grpc.aio's take only keywords) then skips building a dict per RPC.
            mc = getattr(self.channel, kind)(method, ser, deser, _registered_method=registered).__call__
            self.callables[key] = mc
        return mc

    def close(self, grace: float | None = None) -> None:
        """Close the aio channel, cancelling its calls (schedules the coroutine; loop thread)."""
        hand_over_calls(self.channel, self.active)
        asyncio.get_running_loop().create_task(self.channel.close(grace))


class BridgedFuture(grpc.RpcError, grpc.Future, grpc.Call):  # type: ignore[misc,type-arg,unused-ignore]
    """A unary RPC running as a grpc.aio call on a :class:`FutureLoop`.

    States: active (submitted or started), then done, once. The outcome
    fields are written together with ``_done`` under ``_lock`` (first writer
    wins: the loop thread at the end of the call, or :meth:`cancel`), and read
    by other threads only after ``_done`` is set.
    """

    __slots__ = (
        "_call",
        "_callbacks",
        "_cancel_requested",
        "_code",
        "_deadline",
        "_details",
        "_done",
        "_error",
        "_event",
        "_lock",
        "_loop",
        "_requests",
        "_response",
    )

    def __init__(self, loop: FutureLoop, timeout: float | None, requests: RequestsOffLoop | None = None) -> None:
        self._loop = loop
        self._requests = requests
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._lock = threading.Lock()
        self._done = False
        self._cancel_requested = False
        self._event: threading.Event | None = None  # made only if a thread blocks before done
        self._callbacks: list[Callable[[], None]] | None = None
        self._call: Any = None  # the aio call, once started (loop thread)
        self._response: Any = None
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._error: grpc.aio.AioRpcError | None = None

    # -- loop thread ---------------------------------------------------------

    def _run(self, make: Callable[[], Any]) -> None:
        """Make the call object on the loop thread and drive its awaitable to the end."""
        if self._cancel_requested:
            return  # cancel() already finished the future
        try:
            call = make()
        except LocalRpcError as exc:  # failed by the channel before any attempt
            self._finish(None, exc.code(), exc.details(), None)
            return
        except Exception as exc:  # anything else: the RPC fails, the loop goes on
            self._finish(None, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", None)
            return
        self._call = call
        # Drive the awaitable by hand instead of wrapping it in a Task: it
        # yields asyncio futures until done, then returns the response or
        # raises AioRpcError / CancelledError. Same protocol asyncio uses,
        # without a Task per RPC.
        self._step(call.__await__())

    def _step(self, it: Generator[Any, None, Any], _f: Any = None) -> None:
        try:
            waiting_on = it.send(None)
        except BaseException as exc:
            self._ended(exc)
            return
        waiting_on.add_done_callback(lambda f: self._resume(it))

    def _resume(self, it: Generator[Any, None, Any]) -> None:
        # Whatever escapes _step is caught here too, so the future always finishes
        # (an asyncio callback's exception would only be logged, and the caller would
        # wait forever). Seen: under pytest-cov, a process held two CancelledError
        # classes, and the one grpc.aio's task raised was not asyncio.CancelledError.
        try:
            self._step(it)
        except BaseException as exc:
            self._ended(exc)

    def _ended(self, exc: BaseException) -> None:
        """The call's awaitable ended with ``exc`` (StopIteration carries the response)."""
        if isinstance(exc, StopIteration):
            self._finish(exc.value, _OK, None, None)
        elif isinstance(exc, grpc.aio.AioRpcError):
            self._finish(None, exc.code(), exc.details(), exc)
        elif isinstance(exc, asyncio.CancelledError):
            requests = self._requests
            if requests is not None and requests.error is not None and not self._cancel_requested:
                # grpc.aio cancels a call whose request iterator raised; grpcio's own
                # future fails it with UNKNOWN, and so does this one.
                self._finish(None, grpc.StatusCode.UNKNOWN, "Exception iterating requests!", None)
            else:
                self._finish(None, _CANCELLED, _CANCELLED_DETAILS, None)
        elif isinstance(exc, Exception):
            self._finish(None, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}", None)
        else:
            # KeyboardInterrupt, SystemExit: the future fails, the exception goes on.
            self._finish(None, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}", None)
            raise exc

    def _cancel_in_loop(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def _finish(self, response: Any, code: grpc.StatusCode, details: str | None,
                error: grpc.aio.AioRpcError | None) -> None:
        """Record the outcome once (later calls are ignored) and run the callbacks.

        Runs on the loop thread, or on the thread that called :meth:`cancel`.
        """
        with self._lock:
            if self._done:
                return
            self._response, self._code, self._details, self._error = response, code, details, error
            self._done = True
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
        if event is not None:
            event.set()
        if callbacks:
            for cb in callbacks:
                try:
                    cb()
                except Exception:  # as grpc does: log, go on with the next callback
                    log.exception("exception calling callback for %r", self)

    # -- any thread ------------------------------------------------------------

    def _register(self, cb: Callable[[], None]) -> bool:
        with self._lock:
            if self._done:
                return False
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(cb)
            return True

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        if self._loop.in_loop():
            raise RuntimeError("waiting for a discovery future on its own loop thread (in a done-callback?) "
                               "would deadlock; callbacks must not block")
        with self._lock:
            if self._done:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise grpc.FutureTimeoutError()

    # grpc.Future

    def cancel(self) -> bool:
        """Cancel the RPC; False if it already ended.

        Like grpc's own future, the future is CANCELLED (and its callbacks have
        run) when this returns; the call itself is cancelled on the wire by the
        loop thread right after, or never started if it was still queued.
        """
        with self._lock:
            if self._done:
                return False
            self._cancel_requested = True
        self._finish(None, _CANCELLED, _CANCELLED_DETAILS, None)
        self._loop.submit(self._cancel_in_loop)
        return True

    def cancelled(self) -> bool:
        return self._done and self._code is _CANCELLED

    def running(self) -> bool:
        return not self._done

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._code is _OK:
            return self._response
        if self._code is _CANCELLED:
            raise grpc.FutureCancelledError()
        raise self

    def exception(self, timeout: float | None = None) -> Exception | None:
        self._wait(timeout)
        if self._code is _OK:
            return None
        if self._code is _CANCELLED:
            raise grpc.FutureCancelledError()
        return self

    def traceback(self, timeout: float | None = None) -> TracebackType | None:
        self._wait(timeout)
        if self._code is _OK:
            return None
        if self._code is _CANCELLED:
            raise grpc.FutureCancelledError()
        try:
            raise self
        except BridgedFuture:
            return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if not self._register(lambda: fn(self)):
            fn(self)

    # grpc.Call / grpc.RpcContext

    def is_active(self) -> bool:
        return not self._done

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc's own returns None too
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._register(callback)

    def code(self) -> grpc.StatusCode:
        self._wait(None)
        assert self._code is not None
        return self._code

    def details(self) -> str:
        self._wait(None)
        if self._details is None and self._call is not None and self._code is _OK:
            self._details = now(self._call.details())
        return self._details or ""

    def initial_metadata(self) -> Any:
        self._wait(None)
        if self._error is not None:
            return tuple(self._error.initial_metadata() or ())
        if self._call is None:
            return ()
        return tuple(now(self._call.initial_metadata()) or ())

    def trailing_metadata(self) -> Any:
        self._wait(None)
        if self._error is not None:
            return tuple(self._error.trailing_metadata() or ())
        if self._call is None:
            return ()
        return tuple(now(self._call.trailing_metadata()) or ())

    def debug_error_string(self) -> str:
        self._wait(None)
        return "" if self._error is None else self._error.debug_error_string()

    def __repr__(self) -> str:
        if not self._done:
            return "<BridgedFuture active>"
        return f"<BridgedFuture of RPC that terminated with:\n\tstatus = {self._code}\n\tdetails = \"{self._details}\">"

    __str__ = __repr__


def future_on_loop(loop: FutureLoop, make: Callable[[], Any], timeout: float | None,
                   requests: Any = None) -> BridgedFuture:
    """Run the call ``make()`` returns (on ``loop``'s thread) and return its future at once.

    ``make`` builds a grpc.aio-style call object (awaitable, with the
    ``grpc.aio.Call`` getters); it runs on the loop thread, so it may pick a
    backend and start grpc.aio calls there. ``timeout`` is only what
    :meth:`BridgedFuture.time_remaining` reports; the call applies its own.
    ``requests`` is the call's request iterator as :func:`requests_off_loop` made it.
    """
    fut = BridgedFuture(loop, timeout, requests if isinstance(requests, RequestsOffLoop) else None)
    # The call runs in a copy of the caller's contextvars context, as an
    # asyncio task would: what the caller's thread had current (a tracing
    # span, see discovery.otel) is current for the call's attempts too.
    loop.submit(contextvars.copy_context().run, fut._run, make)
    return fut
