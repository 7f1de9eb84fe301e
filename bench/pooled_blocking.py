"""Design P (a comparison point, not used by discovery): ``.future()`` as blocking calls on a shared pool.

Public grpc API only: a future is discovery's own blocking ``with_call`` run
on a reused worker thread of one process-wide, bounded pool
(:class:`CallPool`). It needs no grpc internals and no second connection,
but each RPC is a blocking call with its own completion queue plus a
hand-off, among 30+ threads contending for the GIL (1.2-1.6x grpcio's native
future in client CPU when measured), and a running call cannot be cancelled.
:mod:`bench.futures_design` applies it as design P.

- :class:`CallPool` starts a thread only when no worker is idle, never more
  than ``max_workers``; idle workers exit after ``idle_timeout``.
- :class:`PooledFuture` is what ``.future()`` returns: a :class:`grpc.Future`
  and :class:`grpc.Call` like grpc's own. Done-callbacks run on the worker.
  ``cancel()`` works until a worker has started the call.
- :func:`future_via_pool` starts one, or returns None when the pool is full
  (the caller then uses discovery's own ``.future()``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc

from discovery._calls import LocalRpcError

__all__ = ["CallPool", "PooledFuture", "default_pool", "future_via_pool"]

log = logging.getLogger(__name__)

Invoke = Callable[[float | None], tuple[Any, grpc.Call]]
"""``invoke(timeout) -> (response, call)``: a blocking ``with_call``. Raises ``grpc.RpcError``."""

_PENDING, _RUNNING, _DONE, _CANCELLED = 0, 1, 2, 3
_CANCELLED_DETAILS = "Locally cancelled by application!"


class CallPool:
    """Reusable daemon threads that run blocking RPCs. Thread-safe.

    :meth:`try_submit` hands a task to an idle worker, or starts a worker when
    none is idle and fewer than ``max_workers`` exist, or returns False. Tasks
    never queue behind busy workers: a task is accepted only if a worker will
    run it at once. Workers idle for ``idle_timeout`` seconds exit, so a burst
    leaves no threads behind for long.

    Threading: the counters are guarded by ``_lock``; ``_lock`` is never held
    while a task runs or while a thread starts. A task must not raise (an
    exception is logged and the worker goes on).
    """

    def __init__(self, max_workers: int = 256, idle_timeout: float = 30.0,
                 name: str = "discovery-rpc") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._workers = 0  # live worker threads
        self._idle = 0  # workers waiting on _queue and not yet claimed by a submitter
        self.threads_started = 0

    @property
    def workers(self) -> int:
        """Live worker threads (a snapshot)."""
        return self._workers

    def try_submit(self, task: Callable[[], None]) -> bool:
        """Run ``task`` on a worker now; False if ``max_workers`` are all busy. Never blocks."""
        with self._lock:
            if self._idle:
                # Claim an idle worker: whichever takes the task, the count of
                # workers that are waiting with nothing to do drops by one.
                self._idle -= 1
                self._queue.put(task)
                return True
            if self._workers >= self.max_workers:
                return False
            self._workers += 1
            self.threads_started += 1
            n = self.threads_started
        t = threading.Thread(target=self._work, args=(task,), name=f"{self._name}-{n}", daemon=True)
        try:
            t.start()
        except BaseException:
            with self._lock:
                self._workers -= 1
            raise
        return True

    def _work(self, task: Callable[[], None] | None) -> None:
        q = self._queue
        while True:
            if task is not None:
                try:
                    task()
                except BaseException:  # a task should not raise; keep the worker
                    log.exception("discovery pool task %r failed", task)
                task = None
            with self._lock:
                self._idle += 1
            try:
                task = q.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    # A submitter may have claimed this worker between the
                    # timeout and the lock: it put its task under the lock,
                    # so it is in the queue now.
                    try:
                        task = q.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        self._workers -= 1
                        return

    def _reset_after_fork(self) -> None:
        # Threads do not survive fork(): the child starts with an empty pool.
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._workers = 0
        self._idle = 0


_default_pool: CallPool | None = None
_default_lock = threading.Lock()


def default_pool() -> CallPool:
    """The process-wide pool every discovery channel shares (created on first use)."""
    global _default_pool
    pool = _default_pool
    if pool is None:
        with _default_lock:
            if _default_pool is None:
                _default_pool = CallPool()
            pool = _default_pool
    return pool


def _after_fork_in_child() -> None:
    if _default_pool is not None:
        _default_pool._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PooledFuture(grpc.Future, grpc.Call):  # type: ignore[misc,type-arg,unused-ignore]
    """A unary RPC running as a blocking call on a :class:`CallPool` worker.

    Threading: every method is safe from any thread. State moves
    PENDING -> RUNNING -> DONE, or PENDING -> CANCELLED, under ``_lock``; the
    outcome fields are written once, before the state becomes DONE, and read
    only after. Done-callbacks and ``add_callback`` callbacks run exactly once,
    outside the lock, on the thread that finished the RPC (a pool worker), or
    at once on the registering thread if the RPC is already over.
    """

    __slots__ = (
        "_call",
        "_callbacks",
        "_deadline",
        "_error",
        "_event",
        "_invoke",
        "_lock",
        "_response",
        "_state",
    )

    def __init__(self, invoke: Invoke, timeout: float | None) -> None:
        self._invoke: Invoke | None = invoke
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._lock = threading.Lock()
        self._state = _PENDING
        self._event: threading.Event | None = None  # made only if someone blocks before done
        self._callbacks: list[Callable[[], None]] | None = None
        self._response: Any = None
        self._call: grpc.Call | None = None  # success: the call from with_call
        self._error: grpc.RpcError | None = None  # failure: the RpcError (also a grpc.Call)

    # -- worker side -------------------------------------------------------

    def run(self) -> None:
        """Run the call (on a pool worker). Called once."""
        with self._lock:
            if self._state != _PENDING:
                return  # cancelled while waiting for the worker
            self._state = _RUNNING
        invoke, self._invoke = self._invoke, None
        assert invoke is not None
        try:
            timeout = None
            if self._deadline is not None:
                timeout = self._deadline - time.monotonic()
                if timeout <= 0:
                    raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        "deadline exceeded before the RPC could start")
            self._response, self._call = invoke(timeout)
        except grpc.RpcError as exc:
            # grpc's blocking error (_InactiveRpcError) and LocalRpcError are
            # both grpc.Call; anything else gets wrapped so code() etc. work.
            self._error = exc if isinstance(exc, grpc.Call) else LocalRpcError(
                grpc.StatusCode.UNKNOWN, str(exc))
        except Exception as exc:  # a serializer or interceptor bug: fail the RPC, keep the worker
            self._error = LocalRpcError(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
        self._finish(_DONE)

    def _finish(self, state: int) -> None:
        with self._lock:
            self._state = state
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
        if event is not None:
            event.set()
        if callbacks:
            for cb in callbacks:
                try:
                    cb()
                except Exception:  # as grpc does: log and go on with the next callback
                    log.exception("exception calling callback for %r", self)

    def _on_done(self, cb: Callable[[], None]) -> bool:
        """Register ``cb`` for the end of the RPC; False if it already ended."""
        with self._lock:
            if self._state >= _DONE:
                return False
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(cb)
            return True

    def _wait(self, timeout: float | None) -> None:
        if self._state >= _DONE:
            return
        with self._lock:
            if self._state >= _DONE:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise grpc.FutureTimeoutError()

    def _outcome(self) -> grpc.Call:
        """The finished call's status holder (after :meth:`_wait`)."""
        if self._state == _CANCELLED:
            return LocalRpcError(grpc.StatusCode.CANCELLED, _CANCELLED_DETAILS)
        if self._error is not None:
            return self._error  # type: ignore[return-value]
        assert self._call is not None
        return self._call

    # -- grpc.Future -------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel if no worker started the call yet; False once it runs or ended."""
        with self._lock:
            if self._state != _PENDING:
                return self._state == _CANCELLED
            self._state = _CANCELLED  # run() will see it and not start the call
        self._invoke = None
        self._finish(_CANCELLED)
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        return self._state < _DONE

    def done(self) -> bool:
        return self._state >= _DONE

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise grpc.FutureCancelledError()
        if self._error is not None:
            raise self._error
        return self._response

    def exception(self, timeout: float | None = None) -> Exception | None:
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise grpc.FutureCancelledError()
        return self._error

    def traceback(self, timeout: float | None = None) -> TracebackType | None:
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise grpc.FutureCancelledError()
        return None if self._error is None else self._error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if not self._on_done(lambda: fn(self)):
            fn(self)

    # -- grpc.Call / grpc.RpcContext ----------------------------------------

    def is_active(self) -> bool:
        return self._state < _DONE

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc's own returns None too
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._on_done(callback)

    def initial_metadata(self) -> Any:
        self._wait(None)
        return self._outcome().initial_metadata()

    def trailing_metadata(self) -> Any:
        self._wait(None)
        return self._outcome().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        self._wait(None)
        return self._outcome().code()

    def details(self) -> str:
        self._wait(None)
        return self._outcome().details() or ""

    def debug_error_string(self) -> str:
        self._wait(None)
        out = self._outcome()
        return out.debug_error_string() if hasattr(out, "debug_error_string") else ""

    def __repr__(self) -> str:
        state = ("pending", "running", "done", "cancelled")[self._state]
        return f"<PooledFuture {state}>"


def future_via_pool(invoke: Invoke, timeout: float | None, *,
                    pool: CallPool | None = None) -> PooledFuture | None:
    """Start ``invoke(remaining_timeout)`` (a blocking ``with_call``) on ``pool``.

    Returns the future, or None if the pool has ``max_workers`` calls running:
    the caller must then start the RPC another way (grpc's native future).
    Never blocks. ``pool`` defaults to the process-wide :func:`default_pool`.
    """
    fut = PooledFuture(invoke, timeout)
    if (pool or default_pool()).try_submit(fut.run):
        return fut
    return None
