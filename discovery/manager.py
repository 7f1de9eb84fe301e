"""The subchannel manager: one grpc channel per address, reconciled against each state.

Runs only on the channel's control thread. Reconciliation has two phases: the
diff (which addresses are new, kept, gone) is computed first, then channel I/O
happens; nothing is held locked while channels are created or closed. Readers
on other threads (``Channel.backends()``) see an immutable tuple swapped in
whole.

A removed backend leaves the tuple at once (so the next picker cannot return
it) and its channel is closed only when its in-flight RPCs are done or its
grace period ends: grpc's sync ``Channel.close()`` would cancel them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import grpc

from .address import Address, ResolverState
from .backend import Backend
from .control import ControlLoop, Timer

__all__ = ["SubchannelManager"]

# Backends are part of the channel: their records go to the channel's logger.
log = logging.getLogger("discovery.channel")

_C = grpc.ChannelConnectivity


class SubchannelManager:
    """Owns every backend of one channel. Control thread only, except :attr:`backends`.

    ``make_channel`` builds the grpc channel for an address; ``drain_grace``
    bounds how long a removed backend may keep its in-flight RPCs.
    """

    def __init__(
        self,
        loop: ControlLoop,
        make_backend: Callable[[Address], Backend],
        *,
        drain_grace: float = 30.0,
        target: str = "",
    ) -> None:
        self._loop = loop
        self._target = target
        self._make_backend = make_backend
        self.drain_grace = drain_grace
        self.backends: tuple[Backend, ...] = ()
        self._by_addr: dict[str, Backend] = {}
        self._draining: dict[Backend, Timer | None] = {}
        self._drain_cond = threading.Condition()
        self._state: ResolverState | None = None
        self.created = 0
        self.closed = 0

    @property
    def draining(self) -> tuple[Backend, ...]:
        with self._drain_cond:
            return tuple(self._draining)

    def update(self, state: ResolverState) -> tuple[bool, list[Backend]]:
        """Reconcile with ``state``: (whether the backend set changed, the removed backends).

        Applied whole or not at all: if making a channel fails, the channels
        made so far are closed, nothing changes and the error propagates (so
        the same state pushed again is tried again). The caller publishes a
        picker without the removed backends first, then calls :meth:`drain`.
        """
        if state == self._state:
            return False, []
        # Phase 1: the diff, no I/O. Duplicate addresses keep their first entry.
        wanted: dict[str, Address] = {}
        for a in state.addresses:
            wanted.setdefault(a.addr, a)
        old = self._by_addr
        added = [a for key, a in wanted.items() if key not in old]
        removed = [b for key, b in old.items() if key not in wanted]
        # Phase 2: channel I/O.
        fresh: dict[str, Backend] = {}
        try:
            for a in added:
                fresh[a.addr] = self._create(a)
        except BaseException:
            for b in fresh.values():
                b.close()
            raise
        self._state = state
        new_by_addr: dict[str, Backend] = {}
        changed = bool(added or removed)
        for key, a in wanted.items():
            kept = old.get(key)
            if kept is None:
                kept = fresh[key]
            elif kept.address != a:
                # Same endpoint, new weight/attributes: no channel churn.
                kept.address = a
                changed = True
            new_by_addr[key] = kept
        if not changed and tuple(new_by_addr) == tuple(old):
            return False, []
        self._by_addr = new_by_addr
        self.backends = tuple(new_by_addr.values())
        return True, removed

    def drain(self, removed: Iterable[Backend]) -> None:
        """Start draining backends :meth:`update` removed (after the new picker is out)."""
        for b in removed:
            self._drain(b)

    def _create(self, address: Address) -> Backend:
        b = self._make_backend(address)
        self.created += 1
        b.poll()
        return b

    def _drain(self, b: Backend) -> None:
        # try_close_idle is atomic with Backend.begin: an RPC holding an old
        # picker either got in first (and is waited for) or is refused and re-picks.
        if b.start_drain(self._drained_elsewhere) and b.try_close_idle():
            self.closed += 1
            return
        timer = self._loop.call_later_clock(self.drain_grace, lambda: self._grace_over(b))
        with self._drain_cond:
            self._draining[b] = timer

    def _drained_elsewhere(self, b: Backend) -> None:
        # Called on whatever thread finished the last RPC; closing a channel
        # from its own completion thread is unsafe, so hop to the loop.
        self._loop.submit(lambda: self._close(b, idle_only=True))

    def _grace_over(self, b: Backend) -> None:
        if b in self._draining:
            log.info("backend %s of %s still had %d RPCs after %.1fs grace; closing", b.addr, self._target,
                     b.in_flight, self.drain_grace, extra={"target": self._target, "backend": b.addr})
            self._close(b)

    def _close(self, b: Backend, idle_only: bool = False) -> None:
        if b.closed:
            closed_now = False
        elif idle_only:
            if not b.try_close_idle():
                # An RPC holding an older picker began here after the count
                # reached zero: its end reports idle again, and the grace
                # timer still bounds the wait.
                return
            closed_now = True
        else:
            b.close()
            closed_now = True
        # The count moves with the removal from the draining set, under one
        # lock, so a reader never sees a backend neither draining nor counted.
        with self._drain_cond:
            timer = self._draining.pop(b, None)
            if closed_now:
                self.closed += 1
            self._drain_cond.notify_all()
        if timer is not None:
            timer.cancel()

    def wait_drained(self, timeout: float) -> bool:
        """Block until no backend is draining, or ``timeout``; any thread but the loop's."""
        with self._drain_cond:
            return self._drain_cond.wait_for(lambda: not self._draining, timeout)

    def poll(self, backends: Iterable[Backend] | None = None) -> list[Backend]:
        """Re-read connectivity of ``backends`` (default all); the ones that changed."""
        return [b for b in (self.backends if backends is None else backends) if not b.closing and b.poll()]

    def watched(self) -> list[Backend]:
        """Backends in a transition worth polling quickly.

        CONNECTING ones, and IDLE ones a balancer has just asked to connect.
        """
        return [
            b for b in self.backends
            if b.state is _C.CONNECTING or (b.connect_requested and b.state is _C.IDLE)
        ]

    def close_all(self) -> None:
        """Close every backend, draining ones included (cancels their RPCs)."""
        for b in list(self._draining):
            self._close(b)
        for b in self.backends:
            self.closed += 1
            b.close()
        self.backends = ()
        self._by_addr = {}

    def start_drain_all(self) -> list[Backend]:
        """Move every backend to draining (for a graceful channel close)."""
        out = list(self.backends)
        self.backends = ()
        self._by_addr = {}
        for b in out:
            self._drain(b)
        return out
