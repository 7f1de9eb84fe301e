"""The drop-in channel: a real :class:`grpc.Channel` that balances over many backends.

``Channel`` wires one resolver, one :class:`~discovery.manager.SubchannelManager`
and one balancer together on a control thread, and serves RPCs by reading the
current picker: pick a backend, reuse that backend's cached multicallable,
count the RPC in flight, call. Generated stubs, ``grpc.intercept_channel``,
metadata, deadlines, call credentials, compression and all four RPC shapes
work unchanged because every call ends up on a plain grpc channel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import grpc
import grpc.aio

if TYPE_CHECKING:
    _UU = grpc.UnaryUnaryMultiCallable[Any, Any]
    _US = grpc.UnaryStreamMultiCallable[Any, Any]
    _SU = grpc.StreamUnaryMultiCallable[Any, Any]
    _SS = grpc.StreamStreamMultiCallable[Any, Any]
else:  # the multicallables are generic only in the type stubs
    _UU = grpc.UnaryUnaryMultiCallable
    _US = grpc.UnaryStreamMultiCallable
    _SU = grpc.StreamUnaryMultiCallable
    _SS = grpc.StreamStreamMultiCallable

from ._calls import CompletedCall, DeferredFuture, LocalRpcError, ReplayableStream
from ._futures import BridgedFuture, future_via_loop, shared_loop
from .address import Address, ResolverState
from .backend import Backend, BackendSnapshot, CallableKey
from .balancer import DEFAULT_FAILURE_CODES, Balancer, ErrorPicker, Metadata, Picker, QueuePicker, SubConn
from .clock import Clock
from .config import ServiceConfig
from .control import ControlLoop, Timer
from .errors import ResolverError
from .manager import SubchannelManager
from .methodconfig import RetryPolicy
from .resolver import Resolver
from .retry import RetryThrottle, never_sent
from .settings import ChannelSettings

__all__ = ["Channel", "ChannelSettings"]

log = logging.getLogger(__name__)

_C = grpc.ChannelConnectivity
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class _Core:
    """Shared state of one channel: the picker, the control plane, the listeners.

    ``picker`` is replaced whole by the control thread and read without a lock
    by every RPC. ``cond`` is notified on each replacement for RPCs that wait.
    """

    def __init__(self, target: str, settings: ChannelSettings) -> None:
        self.target = target
        self.settings = settings
        self.picker: Picker = QueuePicker("resolving the target")
        self.state: grpc.ChannelConnectivity = _C.IDLE
        self.cond = threading.Condition(threading.Lock())
        self.closed = False
        # The loop (polls, drain grace) runs on real time; settings.clock is
        # what policies and resolvers measure intervals with, so tests can
        # move ejection and re-resolution time without stalling connectivity.
        self.loop = ControlLoop(f"discovery-control {target}")
        self.manager: SubchannelManager  # set by Channel
        self.balancer: Balancer
        self.resolver: Resolver | None = None
        self.resolver_note = ""
        self.resolver_error = ""
        self.conn_error = ""
        self.has_state = False
        self.failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES
        self.service_config = ServiceConfig()
        self.throttle: RetryThrottle | None = None
        self._consecutive_limit = 0
        self._on_limit: Callable[[SubConn], None] | None = None
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._poll_timer: Timer | None = None
        self._poll_due = 0.0
        self._next_full_poll = 0.0

    # -- ResolverListener (any thread) ------------------------------------

    def update_state(self, state: ResolverState) -> None:
        self.loop.submit(lambda: self._on_resolver_state(state))

    def report_error(self, error: ResolverError) -> None:
        self.loop.submit(lambda: self._on_resolver_error(error))

    # -- BalancerHelper (control thread) ----------------------------------

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        with self.cond:
            if self.closed:
                return
            self.picker = picker
            self.cond.notify_all()
        self._set_state(state)

    @property
    def clock(self) -> Clock:
        return self.settings.clock

    def schedule(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the control thread after ``delay`` seconds of the channel's clock."""
        return self.loop.call_later(delay, lambda: None if self.closed else fn())

    def rebalance(self) -> None:
        """Give the balancer the current backends again (e.g. after an ejection)."""
        self.loop.submit(lambda: None if self.closed else self._rebalance())

    def track_outcomes(self, failure_codes: frozenset[grpc.StatusCode], consecutive_limit: int,
                       on_limit: Callable[[SubConn], None] | None) -> None:
        """Which statuses count as backend failures, and a callback at N failures in a row."""
        self.failure_codes = failure_codes
        self._consecutive_limit = consecutive_limit
        self._on_limit = on_limit
        for b in self.manager.backends:
            self.configure_backend(b, b.health_checked)

    def configure_backend(self, b: Backend, health_checked: bool) -> None:
        b.health_checked = health_checked
        b.consecutive_limit = self._consecutive_limit if self._on_limit is not None else 0
        b.on_consecutive = self._consecutive_hit if self._on_limit is not None else None

    def _consecutive_hit(self, b: Backend) -> None:
        # Runs on the thread that finished the RPC; the policy runs on ours.
        on_limit = self._on_limit
        if on_limit is not None:
            self.loop.submit(lambda: None if self.closed or b.closing else on_limit(b))

    # -- control thread ---------------------------------------------------

    def _on_resolver_state(self, state: ResolverState) -> None:
        if self.closed:
            return
        self.resolver_note = state.note
        self.resolver_error = ""
        changed = self.manager.update(state)
        if changed or not self.has_state:
            self.has_state = True
            self._rebalance()

    def _on_resolver_error(self, error: ResolverError) -> None:
        if self.closed:
            return
        self.resolver_error = str(error)
        log.warning("resolver error for %s (keeping the last good address set): %s", self.target, error)
        if not self.has_state:
            # Nothing good was ever resolved: fail fast rather than queue forever.
            self.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker("resolver error"))

    def _rebalance(self) -> None:
        self.balancer.update(self.manager.backends)
        self._schedule_poll()

    def _schedule_poll(self) -> None:
        """Make sure the next poll comes soon enough for the current transitions."""
        s = self.settings
        now = self.loop.clock.monotonic()
        delay = s.fast_poll if self.manager.watched() else max(0.0, self._next_full_poll - now) or s.slow_poll
        due = now + delay
        if self._poll_timer is not None and not self._poll_timer.cancelled and self._poll_due <= due:
            return
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self._poll_due = due
        self._poll_timer = self.loop.call_later(delay, self._poll)

    def _poll(self) -> None:
        if self.closed:
            return
        self._poll_timer = None
        now = self.loop.clock.monotonic()
        if now >= self._next_full_poll:
            self._next_full_poll = now + self.settings.slow_poll
            changed = self.manager.poll()
        else:
            changed = self.manager.poll(self.manager.watched())
        if changed:
            self.balancer.update(self.manager.backends)
        self._schedule_poll()

    def recheck(self, backend: Backend) -> None:
        """After an RPC failed on ``backend``: re-read it now, ask for re-resolution."""
        def run() -> None:
            if self.closed or backend.closing:
                return
            if backend.poll():
                self._rebalance()
            if self.resolver is not None:
                self.resolver.resolve_now()
        self.loop.submit(run)

    def _set_state(self, state: grpc.ChannelConnectivity) -> None:
        if state is self.state:
            return
        self.state = state
        for cb in list(self._subscribers):
            self._notify(cb, state)

    @staticmethod
    def _notify(cb: Callable[[grpc.ChannelConnectivity], None], state: grpc.ChannelConnectivity) -> None:
        try:
            cb(state)
        except Exception:
            log.exception("connectivity callback %r failed", cb)

    def subscribe(self, cb: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool) -> None:
        def run() -> None:
            self._subscribers.append(cb)
            self._notify(cb, self.state)
            if try_to_connect and self.has_state:
                self._rebalance()
        self.loop.submit(run)

    def unsubscribe(self, cb: Callable[[grpc.ChannelConnectivity], None]) -> None:
        def run() -> None:
            if cb in self._subscribers:
                self._subscribers.remove(cb)
        self.loop.submit(run)

    # -- data plane helpers (any thread) ----------------------------------

    def retry_policy(self, method: str) -> RetryPolicy | None:
        mc = self.service_config.method_config(method)
        return None if mc is None else mc.retry

    def explain(self, picker: Picker) -> str:
        parts = [f"no backend available for {self.target}: {picker.reason}"]
        if self.resolver_note:
            parts.append(self.resolver_note)
        if self.resolver_error:
            parts.append(f"last resolver error: {self.resolver_error}")
        if self.conn_error:
            parts.append(f"last connection error: {self.conn_error}")
        return "; ".join(parts)

    def wait_pick(
        self, method: str, metadata: Metadata | None, timeout: float | None, wait_for_ready: bool | None
    ) -> tuple[SubConn, float | None]:
        """Block until a backend can be picked, or raise the RPC's error.

        Returns the backend and what is left of ``timeout``. Fail-fast RPCs
        wait only while the channel is still connecting (``picker.queue``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.closed:
                    raise ValueError("Cannot invoke RPC on closed channel!")
                picker = self.picker
                b = picker.pick(method, metadata)
                if b is not None:
                    break
                if not picker.queue and not wait_for_ready:
                    raise LocalRpcError(_UNAVAILABLE, self.explain(picker))
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise LocalRpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "deadline exceeded while waiting for a backend: " + self.explain(picker),
                    )
                self.cond.wait(remaining)
        return b, (None if deadline is None else max(0.0, deadline - time.monotonic()))

    def failed(self, backend: Backend, exc: BaseException, policy: RetryPolicy | None = None) -> None:
        """Close the books on an RPC that ended with an error on ``backend``. Any thread.

        Ends the in-flight count (counting a failure if the status is one
        outlier detection counts), charges the retry throttle, and after
        UNAVAILABLE re-reads the backend's connectivity at once.
        """
        code_of = getattr(exc, "code", None)  # grpc.Call, or grpc.aio's AioRpcError
        code = code_of() if code_of is not None else None
        backend.end(code in self.failure_codes)
        if self.throttle is not None and policy is not None and code in policy.retryable:
            self.throttle.on_failure()
        if code is _UNAVAILABLE:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            backend.last_error = details or ""
            self.conn_error = f"{backend.addr}: {details}"
            self.recheck(backend)

    def close(self, grace: float | None) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            # New RPCs must not reach a backend from now on; wait_pick turns
            # this into grpc's "closed channel" error.
            self.picker = ErrorPicker("channel closed")
            self.cond.notify_all()
        started = threading.Event()

        def shutdown() -> None:
            if self.resolver is not None:
                self.resolver.close()
            if self._poll_timer is not None:
                self._poll_timer.cancel()
            self.balancer.close()
            if grace is None:
                self.manager.close_all()
            else:
                self.manager.drain_grace = grace
                self.manager.start_drain_all()
            started.set()

        self.loop.submit(shutdown)
        started.wait(10.0)
        if grace is not None:
            # Each draining backend closes itself when its last RPC ends or
            # its grace timer fires; this only waits for that to happen.
            self.manager.wait_drained(grace + 1.0)
        self.loop.submit(self.manager.close_all)
        self.loop.stop()
        self._set_state_closed()

    def _set_state_closed(self) -> None:
        self.state = _C.SHUTDOWN
        for cb in list(self._subscribers):
            self._notify(cb, _C.SHUTDOWN)
        self._subscribers.clear()


class _MultiCallable:
    __slots__ = ("_core", "_key", "_method", "_replayable", "_retry")

    def __init__(self, core: _Core, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._core = core
        self._method = method
        self._key: CallableKey = (kind, method, ser, deser, registered)
        # A request iterator cannot be replayed; a single request can.
        self._replayable = kind in ("unary_unary", "unary_stream")
        # Looked up once here, not per RPC: None for the common case of no policy.
        self._retry: RetryPolicy | None = core.retry_policy(method) if self._replayable else None

    def _pick_untried(self, tried: list[Any], metadata: Metadata | None) -> Any:
        """Pick until the picker offers a backend not in ``tried`` (at most len(tried)+1 picks).

        Returns the last pick, which may be in ``tried`` if nothing else is
        pickable, or None. Never blocks.
        """
        picker = self._core.picker
        b = None
        for _ in range(len(tried) + 1):
            b = picker.pick(self._method, metadata)
            if b is None or b not in tried:
                break
        return b

    def _pick_avoiding(
        self, tried: list[Backend], timeout: float | None, metadata: Metadata | None, wait_for_ready: bool | None
    ) -> tuple[Backend, float | None]:
        """A backend not in ``tried`` when the picker offers one (Envoy's previous-hosts rule).

        Waits as :meth:`_Core.wait_pick` does when nothing can be picked.
        """
        core = self._core
        b = self._pick_untried(tried, metadata)
        if b is None:
            b, timeout = core.wait_pick(self._method, metadata, timeout, wait_for_ready)
        return b, timeout

    def _should_retry(self, exc: grpc.RpcError, tried: int, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before going again (0 for a transparent re-pick), or None to give up."""
        core = self._core
        if never_sent(exc):
            # Bounded so an address set whose every backend refuses cannot spin.
            return 0.0 if tried <= len(core.manager.backends) else None
        policy = self._retry
        if policy is None or exc.code() not in policy.retryable or attempt >= policy.max_attempts:
            return None
        if core.throttle is not None and not core.throttle.allows_retry():
            return None
        delay = policy.backoff(attempt)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def _next_attempt(self, exc: grpc.RpcError, tried: list[Backend], attempt: int, deadline: float | None,
                      metadata: Metadata | None, wait_for_ready: bool | None,
                      ) -> tuple[Backend, float | None, int] | None:
        """Where the next attempt goes after ``exc``, what is left of the deadline, and
        the attempt number; None to give up. Blocks the caller for the retry backoff."""
        delay = self._should_retry(exc, len(tried), attempt, deadline)
        if delay is None:
            return None
        if delay > 0:
            attempt += 1
            threading.Event().wait(delay)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        b, remaining = self._pick_avoiding(tried, remaining, metadata, wait_for_ready)
        return b, remaining, attempt

    def _invoke(self, attr: str, request: Any, timeout: float | None, metadata: Any, credentials: Any,
                wait_for_ready: bool | None, compression: Any, tried: list[Backend] | None = None,
                exc: grpc.RpcError | None = None) -> Any:
        """One blocking unary-request call with re-picks and retries; see :mod:`discovery.retry`."""
        core = self._core
        deadline = None if timeout is None else time.monotonic() + timeout
        tried = tried if tried is not None else []
        attempt = 1
        if exc is None:
            b, remaining = self._pick_avoiding(tried, timeout, metadata, wait_for_ready)
        else:
            nxt = self._next_attempt(exc, tried, attempt, deadline, metadata, wait_for_ready)
            if nxt is None:
                raise exc
            b, remaining, attempt = nxt
        while True:
            mc = b.callables.get(self._key) or b.callable(self._key)
            b.begin()
            try:
                result = getattr(mc, attr)(request, remaining, metadata, credentials, wait_for_ready and False,
                                           compression)
            except grpc.RpcError as e:
                core.failed(b, e, self._retry)
                tried.append(b)
                nxt = self._next_attempt(e, tried, attempt, deadline, metadata, wait_for_ready)
                if nxt is None:
                    raise
                b, remaining, attempt = nxt
                continue
            b.end()
            if core.throttle is not None and self._retry is not None:
                core.throttle.on_success()
            return result

    def _once(self, attr: str, request: Any, timeout: float | None, metadata: Metadata | None,
              credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
              compression: grpc.Compression | None) -> Any:
        # The hot path: one picker read, one dict lookup, two uncontended lock
        # operations around the backend call (measured at ~1 us per RPC in all).
        if self._retry is not None:
            return self._invoke(attr, request, timeout, metadata, credentials, wait_for_ready, compression)
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None:
            b, timeout = core.wait_pick(self._method, metadata, timeout, wait_for_ready)
        mc = b.callables.get(self._key) or b.callable(self._key)  # type: ignore[attr-defined]
        b.begin()  # type: ignore[attr-defined]
        try:
            # wait_for_ready is the channel's job: a backend that just failed
            # must not hold the RPC while others could serve it.
            result = getattr(mc, attr)(request, timeout, metadata, credentials, wait_for_ready and False,
                                       compression)
        except grpc.RpcError as exc:
            core.failed(b, exc)  # type: ignore[arg-type]
            if self._replayable and never_sent(exc):
                return self._invoke(attr, request, timeout, metadata, credentials, wait_for_ready,
                                    compression, [b], exc)  # type: ignore[list-item]
            raise
        b.end()  # type: ignore[attr-defined]
        return result

    def _future(self, arg: Any, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                compression: Any) -> Any:
        core = self._core
        if self._retry is not None:
            return DeferredFuture(lambda: CompletedCall(*self._invoke(
                "with_call", arg, timeout, metadata, credentials, wait_for_ready, compression)))
        b = core.picker.pick(self._method, metadata)
        if b is None:
            try:
                picker = core.picker
                if core.closed or (not picker.queue and not wait_for_ready):
                    core.wait_pick(self._method, metadata, 0.0, wait_for_ready)
            except LocalRpcError as exc:
                return exc
            return DeferredFuture(
                lambda: self._start(*core.wait_pick(self._method, metadata, timeout, wait_for_ready), "future", arg,
                                    metadata, credentials, wait_for_ready, compression)
            )
        return self._start(b, timeout, "future", arg, metadata, credentials, wait_for_ready, compression)

    def _start(self, b: Any, timeout: Any, attr: str, arg: Any, metadata: Any, credentials: Any,
               wait_for_ready: Any, compression: Any) -> Any:
        """Start a non-blocking call (future or stream) on ``b``; account for it when it ends."""
        mc = b.callables.get(self._key) or b.callable(self._key)
        b.begin()
        try:
            call = getattr(mc, attr)(arg, timeout, metadata, credentials, wait_for_ready and False, compression)
        except BaseException:
            b.end()
            raise
        core = self._core

        def done(f: Any) -> None:
            code = f.code()
            if code is grpc.StatusCode.OK:
                b.end()
            else:
                core.failed(b, f)

        call.add_done_callback(done)
        return call

    def _stream(self, arg: Any, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                compression: Any) -> Any:
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None:
            try:
                b, timeout = core.wait_pick(self._method, metadata, timeout, wait_for_ready)
            except LocalRpcError as exc:
                return exc
        return self._start(b, timeout, "__call__", arg, metadata, credentials, wait_for_ready, compression)


class _UnaryUnary(_MultiCallable, _UU):
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._once("__call__", request, timeout, metadata, credentials, wait_for_ready, compression)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                  credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> Any:
        return self._once("with_call", request, timeout, metadata, credentials, wait_for_ready, compression)

    def future(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
               credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None or self._retry is not None:
            # The rare paths: waiting for a pick, failing fast, retries.
            return self._future(request, timeout, metadata, credentials, wait_for_ready, compression)
        b.begin()  # type: ignore[attr-defined]
        tried: list[Any] = [b]

        def books(f: BridgedFuture) -> None:
            if f.code() is grpc.StatusCode.OK:
                tried[-1].end()
            else:
                core.failed(tried[-1], f)

        def repick(exc: BaseException) -> Any:
            # Loop thread, before the future finishes: an RPC that never left
            # goes to another backend, as blocking calls do.
            if not never_sent(exc) or len(tried) > len(core.manager.backends):
                return None
            nb = self._pick_untried(tried, metadata)
            if nb is None or nb in tried:
                return None  # nowhere else to go: the future fails and books() counts it
            core.failed(tried[-1], exc)
            nb.begin()
            tried.append(nb)
            return nb.twin().callable(self._key)

        # Runs on the shared futures loop as a grpc.aio call: see discovery._futures.
        return future_via_loop(shared_loop(), b.twin, self._key, request, timeout,  # type: ignore[attr-defined]
                               metadata, credentials, wait_for_ready and False, compression, books, repick)


class _UnaryStream(_MultiCallable, _US):
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None:
            try:
                b, timeout = core.wait_pick(self._method, metadata, timeout, wait_for_ready)
            except LocalRpcError as exc:
                return exc
        call = self._start(b, timeout, "__call__", request, metadata, credentials, wait_for_ready, compression)

        def restart(tried: list[Backend], exc: grpc.RpcError, attempt: int) -> tuple[Any, int] | None:
            # Called by the stream before its first message arrived: the
            # request is replayable until then.
            nxt = self._next_attempt(exc, tried, attempt, deadline, metadata, wait_for_ready)
            if nxt is None:
                return None
            b, remaining, attempt = nxt
            tried.append(b)
            return self._start(b, remaining, "__call__", request, metadata, credentials, wait_for_ready,
                               compression), attempt

        return ReplayableStream(call, restart, [b])


class _StreamUnary(_MultiCallable, _SU):
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._once("__call__", request_iterator, timeout, metadata, credentials, wait_for_ready,
                              compression)

    def with_call(self, request_iterator: Iterator[Any], timeout: float | None = None,
                  metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._once("with_call", request_iterator, timeout, metadata, credentials, wait_for_ready,
                              compression)

    def future(self, request_iterator: Iterator[Any], timeout: float | None = None,
               metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._future(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamStream(_MultiCallable, _SS):
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._stream(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class Channel(grpc.Channel):
    """A :class:`grpc.Channel` that resolves a target and balances RPCs over its backends.

    Build it with :func:`discovery.insecure_channel`, :func:`discovery.secure_channel`
    or :func:`discovery.channel_from_config`. Thread-safe. RPC methods never
    wait on the control plane; an RPC waits only when no backend can be picked
    yet (while connecting, or for ``wait_for_ready`` calls), never past its
    deadline.
    """

    def __init__(self, core: _Core) -> None:
        self._core = core

    @property
    def target(self) -> str:
        """The target this channel resolves."""
        return self._core.target

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> _UU:
        return _UnaryUnary(self._core, "unary_unary", method, request_serializer, response_deserializer,
                           bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _US:
        return _UnaryStream(self._core, "unary_stream", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _SU:
        return _StreamUnary(self._core, "stream_unary", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> _SS:
        return _StreamStream(self._core, "stream_stream", method, request_serializer, response_deserializer,
                             bool(_registered_method))

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Call ``callback(state)`` now and on every aggregate connectivity change.

        Callbacks run on the channel's control thread and must not block.
        ``try_to_connect`` asks the balancer to connect idle backends.
        """
        self._core.subscribe(callback, bool(try_to_connect))

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Stop calling ``callback``."""
        self._core.unsubscribe(callback)

    def backends(self) -> tuple[BackendSnapshot, ...]:
        """Snapshots of the current address set, in resolver order. Non-blocking.

        Backends still draining after removal are not listed.
        """
        return tuple(b.snapshot() for b in self._core.manager.backends)

    def get_state(self) -> grpc.ChannelConnectivity:
        """The aggregate connectivity state (what subscribers were last told)."""
        return self._core.state

    def close(self, grace: float | None = None) -> None:
        """Close the channel and every backend channel.

        ``grace`` follows ``grpc.aio.Channel.close``: None cancels in-flight
        RPCs at once; a number lets them finish for up to that many seconds
        while new RPCs are refused. Blocks until done. Idempotent.
        """
        self._core.close(grace)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"<discovery.Channel {self._core.target} {self._core.state.name}>"


def build_channel(
    *,
    target: str,
    resolver_factory: Callable[[_Core], Resolver],
    balancer_factory: Callable[[_Core], Balancer],
    make_channel: Callable[[Address], grpc.Channel],
    settings: ChannelSettings,
    service_config: ServiceConfig,
    make_aio_channel: Callable[[Address], grpc.aio.Channel] | None = None,
) -> Channel:
    """Assemble a channel. Every part is built before anything starts resolving."""
    core = _Core(target, settings)
    core.service_config = service_config
    if service_config.throttling is not None:
        core.throttle = RetryThrottle(service_config.throttling.max_tokens, service_config.throttling.token_ratio)
    health_checked = service_config.health_service_name is not None
    core.manager = SubchannelManager(core.loop, make_channel, drain_grace=settings.drain_grace,
                                     configure=lambda b: core.configure_backend(b, health_checked),
                                     make_aio_channel=make_aio_channel)
    try:
        core.balancer = balancer_factory(core)
        core.resolver = resolver_factory(core)
    except BaseException:
        core.loop.stop()
        raise
    return Channel(core)
