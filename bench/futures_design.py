"""The ``.future()`` designs compared with the integrated one, applied from bench code only.

**D** is discovery as it is: ``_UnaryUnary.future`` runs every unary future
as a grpc.aio call on one shared loop thread, through each backend's aio twin
(:mod:`discovery._futures`). Nothing is patched for D. The others swap the
class of ONE discovery multicallable for a subclass overriding
``discovery.channel._UnaryUnary.future`` (after warm-up):

- **D-old**  the path before the integration: grpc's own sync ``.future()``
  on the picked backend's channel (``_MultiCallable._future`` ->
  ``_start(b, timeout, "future", ...)``). grpc starts a polling ("spin")
  thread whenever that channel's count of managed calls leaves zero.
- **S**  D-old, but each backend channel's spin loop runs on a reused pool
  thread instead of a new one (replaces the private ``_managed_call`` of each
  backend's grpc multicallable: grpc internals).
- **P**  :mod:`bench.pooled_blocking`: blocking ``with_call`` on a shared,
  bounded pool of reused threads (public grpc API only).
- **K**  D-old plus one never-ending server stream per backend, so no
  backend channel's managed count reaches zero and its spin thread lives
  forever: one thread per backend, the rejected reference point.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc._cython import cygrpc

import discovery.channel as dch

from .pooled_blocking import CallPool, future_via_pool
from .server import HOLD

__all__ = ["DESIGNS", "SpinPool", "apply_design"]

DESIGNS = ("D", "D-old", "S", "P", "K")


class OldFutureUnaryUnary(dch._UnaryUnary):  # type: ignore[misc,name-defined]
    """D-old: ``future()`` as before the integration, grpc's sync future on the backend channel."""

    __slots__ = ()

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None,
               compression: Any = None) -> Any:
        return self._future(request, timeout, metadata, credentials, wait_for_ready, compression)


# -- P: pooled blocking calls ------------------------------------------------

class PooledUnaryUnary(dch._UnaryUnary):  # type: ignore[misc,name-defined]
    """P: ``future()`` as a blocking ``with_call`` on a pool worker; discovery's own when the pool is full."""

    __slots__ = ()
    pool: CallPool | None = None  # None: the process-wide default pool

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None,
               compression: Any = None) -> Any:
        fut = future_via_pool(
            lambda t: dch._UnaryUnary.with_call(self, request, t, metadata, credentials, wait_for_ready,
                                                compression),
            timeout,
            pool=self.pool,
        )
        if fut is not None:
            return fut
        return super().future(request, timeout, metadata, credentials, wait_for_ready, compression)


# -- S: pooled spin threads ---------------------------------------------------

class SpinPool:
    """Reused threads for grpc channel spin loops; grows without bound (never queues).

    A spin loop must start at once (its channel's calls complete only while it
    runs), so there is no cap; live threads are bounded by the number of
    channels that have managed calls in flight at the same moment.
    """

    def __init__(self, idle_timeout: float = 30.0) -> None:
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._q: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self.workers = 0
        self.threads_started = 0

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._q.put(task)
                return
            self.workers += 1
            self.threads_started += 1
        threading.Thread(target=self._work, args=(task,), name="bench-spin", daemon=True).start()

    def _work(self, task: Callable[[], None] | None) -> None:
        while True:
            if task is not None:
                task()
                task = None
            with self._lock:
                self._idle += 1
            try:
                task = self._q.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    try:
                        task = self._q.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        self.workers -= 1
                        return


def pooled_managed_call(state: Any, pool: SpinPool) -> Callable[..., Any]:
    """A drop-in for grpc's ``_channel_managed_call_management(state)`` using ``pool``.

    Same protocol as grpc 1.85's: the count and the call creation under
    ``state.lock``; the spin loop ends when the count returns to zero.
    """

    def channel_spin() -> None:
        while True:
            cygrpc.block_if_fork_in_progress(state)
            event = state.channel.next_call_event()
            if event.completion_type == cygrpc.CompletionType.queue_timeout:
                continue
            if event.tag(event):
                with state.lock:
                    state.managed_calls -= 1
                    if state.managed_calls == 0:
                        return

    def create(flags: int, method: bytes, host: Any, deadline: Any, metadata: Any, credentials: Any,
               operations: Any, event_handler: Any, context: Any, _registered_call_handle: Any) -> Any:
        operations_and_tags = tuple((op, event_handler) for op in operations)
        with state.lock:
            call = state.channel.integrated_call(flags, method, host, deadline, metadata, credentials,
                                                 operations_and_tags, context, _registered_call_handle)
            if state.managed_calls == 0:
                state.managed_calls = 1
                pool.submit(channel_spin)
            else:
                state.managed_calls += 1
            return call

    return create


def apply_spin_pool(channel: Any, mc: Any, pool: SpinPool) -> None:
    """D-old, with every backend's grpc multicallable for ``mc`` running its spin loop on ``pool``."""
    mc.__class__ = OldFutureUnaryUnary
    for b in channel._core.manager.backends:
        inner = b.callable(mc._key)
        inner._managed_call = pooled_managed_call(b.channel._call_state, pool)


# -- K: a keep-alive stream per backend ----------------------------------------

def open_keepalive_streams(channel: Any) -> list[Any]:
    """One never-ending server stream per backend; cancel them to undo."""
    return [b.channel.unary_stream(HOLD)(b"", None) for b in channel._core.manager.backends]


def apply_design(design: str, channel: Any, mc: Any) -> Callable[[], None]:
    """Apply ``design`` to discovery ``channel``/``mc`` (after warm-up); return an undo."""
    if design == "D":
        return lambda: None
    if design == "D-old":
        mc.__class__ = OldFutureUnaryUnary
        return lambda: None
    if design == "P":
        mc.__class__ = PooledUnaryUnary
        return lambda: None
    if design == "S":
        apply_spin_pool(channel, mc, SpinPool())
        return lambda: None
    if design == "K":
        mc.__class__ = OldFutureUnaryUnary
        calls = open_keepalive_streams(channel)

        def undo() -> None:
            for c in calls:
                c.cancel()
        return undo
    raise ValueError(f"unknown design {design!r}; expected one of {DESIGNS}")


def future_is(mc: Any, design: str) -> bool:
    """Whether ``mc.future`` is the one ``design`` installs (a check that the patch took)."""
    expected = {"D": dch._UnaryUnary, "D-old": OldFutureUnaryUnary, "S": OldFutureUnaryUnary,
                "K": OldFutureUnaryUnary, "P": PooledUnaryUnary}[design]
    return type(mc) is expected and isinstance(mc, grpc.UnaryUnaryMultiCallable)
