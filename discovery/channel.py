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
from typing import Any

import grpc

from ._calls import DeferredFuture, LocalRpcError
from .address import Address, ResolverState
from .backend import Backend, BackendSnapshot, CallableKey
from .balancer import Balancer, ErrorPicker, Metadata, Picker, QueuePicker, SubConn
from .clock import SYSTEM_CLOCK, Clock
from .control import ControlLoop, Timer
from .errors import ResolverError
from .manager import SubchannelManager
from .resolver import Resolver

__all__ = ["Channel", "ChannelSettings"]

log = logging.getLogger(__name__)

_C = grpc.ChannelConnectivity
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class ChannelSettings:
    """Knobs of the control plane (not grpc channel arguments).

    ``fast_poll`` is how often backends in a transition (CONNECTING, or asked to
    connect) are re-read; ``slow_poll`` how often every backend is; ``drain_grace``
    how long a removed backend may finish its in-flight RPCs.
    """

    __slots__ = ("clock", "drain_grace", "fast_poll", "slow_poll")

    def __init__(
        self,
        *,
        fast_poll: float = 0.02,
        slow_poll: float = 0.25,
        drain_grace: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.fast_poll = fast_poll
        self.slow_poll = slow_poll
        self.drain_grace = drain_grace
        self.clock = clock


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
        self.loop = ControlLoop(f"discovery-control {target}", settings.clock)
        self.manager: SubchannelManager  # set by Channel
        self.balancer: Balancer
        self.resolver: Resolver | None = None
        self.resolver_note = ""
        self.resolver_error = ""
        self.conn_error = ""
        self.has_state = False
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
        now = s.clock.monotonic()
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
        now = self.settings.clock.monotonic()
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

    def failed(self, backend: Backend, exc: BaseException) -> None:
        """Bookkeeping after an RPC on ``backend`` failed. Cheap; any thread."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code is _UNAVAILABLE:
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
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
        done = threading.Event()

        def shutdown() -> None:
            if self.resolver is not None:
                self.resolver.close()
            if self._poll_timer is not None:
                self._poll_timer.cancel()
            self.balancer.close()
            if grace is None:
                self.manager.close_all()
                done.set()
                return
            self.manager.drain_grace = grace
            self.manager.start_drain_all()
            done.set()

        self.loop.submit(shutdown)
        done.wait(10.0)
        if grace is not None:
            self._wait_drained(grace)
        self.loop.submit(self.manager.close_all)
        self.loop.stop()
        self._set_state_closed()

    def _wait_drained(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        drained = threading.Event()

        def check() -> None:
            if not self.manager.draining:
                drained.set()
            elif time.monotonic() < deadline:
                self.loop.call_later(0.01, check)
            else:
                drained.set()

        self.loop.submit(check)
        drained.wait(grace + 5.0)

    def _set_state_closed(self) -> None:
        self.state = _C.SHUTDOWN
        for cb in list(self._subscribers):
            self._notify(cb, _C.SHUTDOWN)
        self._subscribers.clear()


class _MultiCallable:
    __slots__ = ("_core", "_key", "_method")

    def __init__(self, core: _Core, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self._core = core
        self._method = method
        self._key: CallableKey = (kind, method, ser, deser, registered)

    def _pick(
        self, timeout: float | None, metadata: Metadata | None, wait_for_ready: bool | None
    ) -> tuple[Backend, float | None]:
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None:
            b, timeout = core.wait_pick(self._method, metadata, timeout, wait_for_ready)
        return b, timeout  # type: ignore[return-value]

    def _blocking(self, attr: str, arg: Any, timeout: Any, metadata: Any, credentials: Any,
                  wait_for_ready: Any, compression: Any) -> Any:
        b, timeout = self._pick(timeout, metadata, wait_for_ready)
        mc = b.callables.get(self._key) or b.callable(self._key)
        b.begin()
        try:
            return getattr(mc, attr)(arg, timeout, metadata, credentials, wait_for_ready, compression)
        except grpc.RpcError as exc:
            self._core.failed(b, exc)
            raise
        finally:
            b.end()

    def _future(self, arg: Any, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                compression: Any) -> Any:
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None:
            try:
                picker = core.picker
                if core.closed or (not picker.queue and not wait_for_ready):
                    core.wait_pick(self._method, metadata, 0.0, wait_for_ready)
            except LocalRpcError as exc:
                return exc
            return DeferredFuture(
                lambda: self._start_future(*self._pick(timeout, metadata, wait_for_ready), arg, metadata,
                                           credentials, wait_for_ready, compression)
            )
        return self._start_future(b, timeout, arg, metadata, credentials, wait_for_ready, compression)

    def _start_future(self, b: Backend, timeout: Any, arg: Any, metadata: Any, credentials: Any,
                      wait_for_ready: Any, compression: Any) -> Any:
        mc = b.callables.get(self._key) or b.callable(self._key)
        b.begin()
        try:
            fut = mc.future(arg, timeout, metadata, credentials, wait_for_ready, compression)
        except BaseException:
            b.end()
            raise
        core = self._core

        def done(f: Any) -> None:
            b.end()
            if f.code() is not grpc.StatusCode.OK:
                core.failed(b, f)

        fut.add_done_callback(done)
        return fut

    def _stream(self, arg: Any, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                compression: Any) -> Any:
        try:
            b, timeout = self._pick(timeout, metadata, wait_for_ready)
        except LocalRpcError as exc:
            return exc
        mc = b.callables.get(self._key) or b.callable(self._key)
        b.begin()
        try:
            call = mc(arg, timeout, metadata, credentials, wait_for_ready, compression)
        except BaseException:
            b.end()
            raise
        core = self._core

        def done(f: Any) -> None:
            b.end()
            if f.code() is not grpc.StatusCode.OK:
                core.failed(b, f)

        call.add_done_callback(done)
        return call


class _UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        # The hot path, written out rather than shared, to keep it to one
        # picker read, one dict lookup and two uncontended lock operations.
        core = self._core
        b = core.picker.pick(self._method, metadata)
        if b is None:
            b, timeout = core.wait_pick(self._method, metadata, timeout, wait_for_ready)
        mc = b.callables.get(self._key) or b.callable(self._key)  # type: ignore[attr-defined]
        b.begin()  # type: ignore[attr-defined]
        try:
            return mc(request, timeout, metadata, credentials, wait_for_ready, compression)
        except grpc.RpcError as exc:
            core.failed(b, exc)  # type: ignore[arg-type]
            raise
        finally:
            b.end()  # type: ignore[attr-defined]

    def with_call(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                  credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> Any:
        return self._blocking("with_call", request, timeout, metadata, credentials, wait_for_ready, compression)

    def future(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
               credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:
        return self._future(request, timeout, metadata, credentials, wait_for_ready, compression)


class _UnaryStream(_MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Metadata | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._stream(request, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._blocking("__call__", request_iterator, timeout, metadata, credentials, wait_for_ready,
                              compression)

    def with_call(self, request_iterator: Iterator[Any], timeout: float | None = None,
                  metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._blocking("with_call", request_iterator, timeout, metadata, credentials, wait_for_ready,
                              compression)

    def future(self, request_iterator: Iterator[Any], timeout: float | None = None,
               metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._future(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamStream(_MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Metadata | None = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None, compression: grpc.Compression | None = None) -> Any:
        return self._stream(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class Channel(grpc.Channel):  # type: ignore[misc]
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
                    _registered_method: bool | None = False) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self._core, "unary_unary", method, request_serializer, response_deserializer,
                           bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> grpc.UnaryStreamMultiCallable:
        return _UnaryStream(self._core, "unary_stream", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self._core, "stream_unary", method, request_serializer, response_deserializer,
                            bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> grpc.StreamStreamMultiCallable:
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

    def __exit__(self, *exc: object) -> bool:
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
) -> Channel:
    """Assemble a channel. Every part is built before anything starts resolving."""
    core = _Core(target, settings)
    core.manager = SubchannelManager(core.loop, make_channel, drain_grace=settings.drain_grace)
    try:
        core.balancer = balancer_factory(core)
        core.resolver = resolver_factory(core)
    except BaseException:
        core.loop.stop()
        raise
    return Channel(core)
