"""The shared state of one balancing channel: picker, control plane, listeners, waiters.

:class:`ChannelCore` is what the sync :class:`discovery.Channel` and the
asyncio :class:`discovery.aio.Channel` are facades over. It is the resolver's
listener and the balancer's helper, owns the control loop (one thread per
channel that runs every resolver update, connectivity change and policy timer
in order, like grpc-go's callback serialiser), and publishes the picker the
data plane reads without a lock.

Threading rules: ``picker`` is replaced whole by the control thread and read
by every RPC. Blocking waiters wait on ``cond``; asyncio waiters register a
future that is resolved on its own loop. Nothing here blocks the data plane
except :meth:`wait_pick`, which an RPC calls only when nothing can be picked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import grpc

from . import observe
from .address import Address, ResolverState
from .attempts import RetryThrottle
from .backend import Backend
from .balancer import (
    Balancer,
    BalancerState,
    Cancellable,
    ErrorPicker,
    Picker,
    QueuePicker,
    StreamHandle,
    SubConn,
)
from .clock import Clock
from .config import ServiceConfig
from .control import ControlLoop, Timer
from .errors import ResolverError
from .manager import SubchannelManager
from .picking import PickWaits, wake_all
from .resolver import Resolver
from .settings import ChannelSettings
from .streams import BackendStream

__all__ = ["ChannelCore", "assemble", "backend_factory", "build_core"]

log = logging.getLogger("discovery.channel")

_C = grpc.ChannelConnectivity
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class ChannelCore(PickWaits):
    """One channel's control plane and the data plane's shared state."""

    def __init__(self, target: str, settings: ChannelSettings, service_config: ServiceConfig) -> None:
        self.target = target
        self.settings = settings
        self.service_config = service_config
        self.picker: Picker = QueuePicker("resolving the target")
        self.state: grpc.ChannelConnectivity = _C.IDLE
        self.cond = threading.Condition(threading.Lock())
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.closed = False
        # What Channel.backends() lists, and whether it lags the manager (see publish_view).
        self.listed: tuple[Backend, ...] = ()
        self._view_stale = False
        self.loop = ControlLoop(f"discovery-control {target}", clock=settings.clock, on_error=self._control_failed,
                                after_each=self._publish_view_if_stale)
        self.manager: SubchannelManager  # set by the assembler
        self.balancer: Balancer
        self.resolver: Resolver | None = None
        self.resolver_note = ""
        self.resolver_error = ""
        self._logged_resolver_error = ""
        self.conn_error = ""
        self.has_state = False
        self._resolver_state = ResolverState(())
        self.throttle: RetryThrottle | None = None
        if service_config.throttling is not None:
            self.throttle = RetryThrottle(service_config.throttling.max_tokens, service_config.throttling.token_ratio)
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._poll_timer: Timer | None = None
        self._poll_due = 0.0
        self._next_full_poll = 0.0
        self._ejected: set[str] = set()
        # The event loop of an asyncio channel, once known (its backends' channels live there).
        self.aio_loop: asyncio.AbstractEventLoop | None = None
        # Observability: control-plane counters, read by discovery.metrics when asked.
        self.stats = observe.ChannelStats()
        # What was last logged of each backend (connectivity, health): one record per change.
        self._logged: dict[str, tuple[grpc.ChannelConnectivity, bool]] = {}
        self._extra = {"target": target}

    # -- ResolverListener (any thread) ------------------------------------

    def update_state(self, state: ResolverState) -> None:
        self.loop.submit(lambda: self._on_resolver_state(state))

    def report_error(self, error: ResolverError) -> None:
        self.loop.submit(lambda: self._on_resolver_error(error))

    # -- BalancerHelper (control thread, except schedule) -------------------

    @property
    def clock(self) -> Clock:
        return self.settings.clock

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        with self.cond:
            if self.closed:
                return
            self.picker = picker
            self.cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        wake_all(waiters)
        self._set_state(state)

    def schedule(self, delay: float, fn: Callable[[], None]) -> Cancellable:
        """Run ``fn`` on the control thread after ``delay`` seconds of the injected clock.

        Thread-safe, so a ``done`` callback may use it to hand work to the control thread.
        """
        def run() -> None:
            if self.closed:
                return
            try:
                fn()
            finally:
                # fn may have asked a backend to connect (ring_hash connects on a
                # pick, through this method): poll it at the fast rate, or the
                # RPC waiting for it would wait for the next full poll.
                if not self.closed:
                    self._schedule_poll()
        return self.loop.call_later_clock(delay, run)

    def resolve_now(self) -> None:
        resolver = self.resolver
        if resolver is not None and not self.closed:
            resolver.resolve_now()

    def report_ejection(self, subconn: SubConn, ejected: bool) -> None:
        b = subconn.backend
        b.ejected = ejected
        self._view_stale = True
        (self._ejected.add if ejected else self._ejected.discard)(b.addr)
        if ejected:  # observability: discovery_ejections_total
            self.stats.ejections[b.addr] = self.stats.ejections.get(b.addr, 0) + 1

    def open_stream(self, subconn: SubConn, method: str, request: bytes,
                    on_message: Callable[[bytes], None],
                    on_end: Callable[[grpc.StatusCode, str], None]) -> StreamHandle:
        """A server stream to ``subconn``'s backend alone (see :meth:`BalancerHelper.open_stream`)."""
        return BackendStream.start(self.loop, subconn.backend, self.aio_loop, method, request, on_message, on_end)

    # -- control thread ---------------------------------------------------

    def publish_view(self) -> None:
        """Let ``Channel.backends()`` show the current address set and backend states. Control thread.

        A backend's state changes (``Backend.poll``) before the balancer
        hears of it, and the address set changes before the balancer gets it.
        Were snapshots read live, a caller could see a backend leave READY (or
        an address leave the set) and still have its next RPCs picked for it
        by the picker not yet replaced; or see a backend READY that the
        picker does not have yet. So what snapshots show is published only
        here, once the control task that made the change (and the picker for
        it) is done: the control loop calls this after every task that
        changed something.
        """
        self._view_stale = False
        listed = self.listed = self.manager.backends
        for b in listed:
            b.show()

    def _publish_view_if_stale(self) -> None:
        if self._view_stale:
            self.publish_view()

    def make_backend_hook(self, b: Backend) -> Backend:
        # A backend re-created for an address that a policy had ejected keeps the mark.
        b.ejected = b.addr in self._ejected
        return b

    def _on_resolver_state(self, state: ResolverState) -> None:
        if self.closed:
            return
        before = [b.addr for b in self.manager.backends] if log.isEnabledFor(logging.INFO) else None
        try:
            changed, removed = self.manager.update(state)
            self._view_stale = self._view_stale or changed
        except Exception as exc:
            # A state the manager cannot apply (an address grpc refuses) is a
            # resolver error: the last good set stays, whole.
            log.exception("cannot apply the address set of %s", self.target, extra={"target": self.target})
            self._on_resolver_error(ResolverError(f"cannot use the resolved addresses: {exc}"))
            return
        self.stats.resolver_updates += 1  # observability: discovery_resolver_updates_total
        for b in removed:
            self.stats.ejections.pop(b.addr, None)
            self._logged.pop(b.addr, None)
        if self.resolver_error:
            log.info("resolver of %s recovered", self.target, extra=self._extra)
        if before is not None and (changed or not self.has_state):
            self._log_address_set(before, state)
        self.resolver_note = state.note
        self.resolver_error = ""
        self._logged_resolver_error = ""
        if changed or not self.has_state:
            self.has_state = True
            self._resolver_state = state
            self.balancer.update_state(
                BalancerState(self.manager.backends, state, self.service_config.policy_config))
            self.manager.drain(removed)
            self._schedule_poll()

    def _log_address_set(self, before: list[str], state: ResolverState) -> None:
        # Once per change of the set: how many, what came and went (addresses are no secret).
        now = [b.addr for b in self.manager.backends]
        old, new = set(before), set(now)
        added = [a for a in now if a not in old]
        gone = [a for a in before if a not in new]
        note = f" ({state.note})" if state.note else ""
        log.info("address set of %s: %d backends, %d added, %d removed%s", self.target, len(now), len(added),
                 len(gone), note, extra=self._extra)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("address set of %s: added %s; removed %s", self.target, _some(added), _some(gone),
                      extra=self._extra)

    def _log_backends(self, backends: list[Backend]) -> None:
        """One record per change of a backend's connectivity or health (control thread)."""
        for b in backends:
            now = (b.state, b.healthy)
            was = self._logged.get(b.addr)
            if now == was:
                continue
            self._logged[b.addr] = now
            extra = {"target": self.target, "backend": b.addr}
            old = "new" if was is None else f"{was[0].name}{'' if was[1] else ' (unhealthy)'}"
            new = f"{b.state.name}{'' if b.healthy else ' (unhealthy)'}"
            # A backend that fails (or fails its health check) is worth INFO; the rest is DEBUG.
            level = logging.INFO if (b.state is _C.TRANSIENT_FAILURE or not b.healthy) or (
                was is not None and (was[0] is _C.TRANSIENT_FAILURE or not was[1])) else logging.DEBUG
            log.log(level, "backend %s of %s: %s -> %s", b.addr, self.target, old, new, extra=extra)

    def _on_resolver_error(self, error: ResolverError) -> None:
        if self.closed:
            return
        self.stats.resolver_errors += 1  # observability: discovery_resolver_errors_total
        self.resolver_error = str(error)
        if self.resolver_error != self._logged_resolver_error:
            # Logged once per change: a registry that stays down does not flood the log.
            self._logged_resolver_error = self.resolver_error
            log.warning("resolver error for %s (keeping the last good address set): %s", self.target, error,
                        extra={"target": self.target})
        self.balancer.resolver_error(error)
        if not self.has_state:
            # Nothing good was ever resolved: fail fast rather than queue forever.
            self.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker("resolver error"))

    def _control_failed(self, exc: BaseException) -> None:
        # A bug in a policy or plugin must not leave RPCs waiting for a picker
        # that never comes: they fail with the error until the next good picker.
        log.error("control loop of %s failed", self.target, exc_info=exc, extra={"target": self.target})
        if not self.closed:
            self.update_picker(_C.TRANSIENT_FAILURE,
                               ErrorPicker(f"internal error in the channel's control loop: {exc!r}"))

    def _schedule_poll(self) -> None:
        """Make sure the next poll comes soon enough for the current transitions."""
        s = self.settings
        now = time.monotonic()
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
        now = time.monotonic()
        if now >= self._next_full_poll:
            self._next_full_poll = now + self.settings.slow_poll
            changed = self.manager.poll()
        else:
            changed = self.manager.poll(self.manager.watched())
        if changed:
            self._view_stale = True
            self._log_backends(changed)
        try:
            for b in changed:
                if b.state is _C.TRANSIENT_FAILURE:
                    b.probe_error()
                elif b.state is _C.READY:
                    b.last_error = ""
                self.balancer.subconn_state(b)
        finally:
            self._schedule_poll()

    def recheck(self, backend: Backend) -> None:
        """After an attempt failed on ``backend``: re-read it now, ask for re-resolution."""
        def run() -> None:
            if self.closed or backend.closing:
                return
            if backend.poll():
                self._view_stale = True
                self._log_backends([backend])
                self.balancer.subconn_state(backend)
                self._schedule_poll()
            if self.resolver is not None:
                self.resolver.resolve_now()
        self.loop.submit(run)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """An asyncio channel learned its loop: open its backends' channels there. Any thread."""
        if self.aio_loop is not None:
            return
        self.aio_loop = loop

        def run() -> None:
            for b in self.manager.backends:
                b.bind_loop(loop)
            self._schedule_poll()
        self.loop.submit(run)

    def kick(self) -> None:
        """Ask idle backends to connect (``try_to_connect``), from any thread."""
        def run() -> None:
            if self.closed or not self.has_state:
                return
            for b in self.manager.backends:
                if b.state is _C.IDLE:
                    b.connect()
            self._schedule_poll()
        self.loop.submit(run)

    def _set_state(self, state: grpc.ChannelConnectivity) -> None:
        if state is self.state:
            return
        log.info("channel %s: %s -> %s", self.target, self.state.name, state.name, extra=self._extra)
        self.state = state
        for cb in list(self._subscribers):
            self._notify(cb, state)

    def _notify(self, cb: Callable[[grpc.ChannelConnectivity], None], state: grpc.ChannelConnectivity) -> None:
        try:
            cb(state)
        except Exception:
            log.exception("connectivity callback %r failed", cb, extra=self._extra)

    def subscribe(self, cb: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool) -> None:
        def run() -> None:
            self._subscribers.append(cb)
            self._notify(cb, self.state)
        self.loop.submit(run)
        if try_to_connect:
            self.kick()

    def unsubscribe(self, cb: Callable[[grpc.ChannelConnectivity], None]) -> None:
        def run() -> None:
            if cb in self._subscribers:
                self._subscribers.remove(cb)
        self.loop.submit(run)

    # -- close --------------------------------------------------------------

    def begin_close(self) -> bool:
        """Refuse new RPCs from now on; False if the channel was already closing."""
        with self.cond:
            if self.closed:
                return False
            self.closed = True
            self.picker = ErrorPicker("channel closed")
            self.cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        wake_all(waiters)
        return True

    def shutdown(self, grace: float | None) -> threading.Event:
        """Stop the resolver and balancer and start closing backends, on the control thread.

        Returns an event set once that has happened. With ``grace`` None every
        backend closes now (cancelling its RPCs); else each drains first.
        """
        started = threading.Event()

        def run() -> None:
            try:
                if self.resolver is not None:
                    self.resolver.close()
                if self._poll_timer is not None:
                    self._poll_timer.cancel()
                self.balancer.close()
            finally:
                if grace is None:
                    self.manager.close_all()
                else:
                    self.manager.drain_grace = grace
                    self.manager.start_drain_all()
                self.publish_view()
                started.set()

        self.loop.submit(run)
        return started

    def finish_close(self) -> None:
        def last() -> None:
            self.manager.close_all()
            self.publish_view()
            # Subscribers hear SHUTDOWN on the control thread, like every other state.
            self._set_state(_C.SHUTDOWN)
            self._subscribers.clear()

        self.loop.submit(last)
        self.loop.stop()

    def close(self, grace: float | None) -> None:
        """Close from a thread (blocking): refuse RPCs, drain or cancel, stop the loop."""
        if not self.begin_close():
            return
        self.shutdown(grace).wait(10.0)
        if grace is not None:
            # Each draining backend closes itself when its last RPC ends or
            # its grace timer fires; this only waits for that to happen.
            self.manager.wait_drained(grace + 1.0)
        self.finish_close()


def _some(addrs: list[str], limit: int = 20) -> str:
    """A list of addresses for a log line, cut after ``limit``."""
    if not addrs:
        return "none"
    more = f" and {len(addrs) - limit} more" if len(addrs) > limit else ""
    return ", ".join(addrs[:limit]) + more


def backend_factory(core: ChannelCore, make_channel: Callable[[Address], grpc.Channel] | None,
                    make_aio_channel: Callable[[Address], grpc.aio.Channel]) -> Callable[[Address], Backend]:
    """How the manager makes a backend: a sync channel (plus an aio twin for futures), or,
    for an asyncio channel, one aio channel made on the application's loop."""
    health = core.service_config.health_service_name is not None
    n = core.settings.connections_per_backend
    if n > 1:
        # A pool of n grpc channels (n connections) stands in for each backend's channel.
        from .pool import PooledAioChannel, PooledChannel

        one_channel, one_aio = make_channel, make_aio_channel
        if one_channel is not None:
            make_channel = lambda a: PooledChannel([one_channel(a) for _ in range(n)])  # noqa: E731
        make_aio_channel = lambda a: PooledAioChannel([one_aio(a) for _ in range(n)])  # noqa: E731

    def make(address: Address) -> Backend:
        if make_channel is not None:
            b = Backend(address, make_channel(address), lambda: make_aio_channel(address), health_checked=health)
        else:
            b = Backend(address, None, lambda: make_aio_channel(address), aio_loop=core.aio_loop,
                        health_checked=health)
        return core.make_backend_hook(b)

    return make


def build_core(*, target: str, resolver_factory: Callable[[ChannelCore], Resolver],
               balancer_factory: Callable[[ChannelCore], Balancer], make_channel: Callable[[Address], grpc.Channel],
               settings: ChannelSettings, service_config: ServiceConfig,
               make_aio_channel: Callable[[Address], grpc.aio.Channel], aio: bool = False) -> ChannelCore:
    """A channel's core with its manager, balancer and resolver, for either facade.

    Every part is built before anything starts resolving. An asyncio core makes
    grpc.aio backend channels only (``make_channel`` unused), on the running loop
    if there is one, else on the loop of its first RPC or ``channel_ready()``.
    """
    core = ChannelCore(target, settings, service_config)
    if aio:
        with contextlib.suppress(RuntimeError):
            core.aio_loop = asyncio.get_running_loop()
    assemble(core, backend_factory(core, None if aio else make_channel, make_aio_channel), resolver_factory,
             balancer_factory)
    return core


def assemble(core: ChannelCore, make_backend: Callable[[Address], Backend],
             resolver_factory: Callable[[ChannelCore], Resolver],
             balancer_factory: Callable[[ChannelCore], Balancer]) -> None:
    """Give ``core`` its manager, balancer and resolver (the resolver last: it starts at once)."""
    core.manager = SubchannelManager(core.loop, make_backend, drain_grace=core.settings.drain_grace,
                                     target=core.target)
    try:
        core.balancer = balancer_factory(core)
        core.resolver = resolver_factory(core)
    except BaseException:
        core.loop.stop()
        raise
    observe.register_channel(core)  # observability: metrics cover every channel, made before or after
