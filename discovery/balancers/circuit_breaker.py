"""``circuit_breaker``: caps on RPCs in flight, for the channel and per backend, around any child policy.

Envoy's and Istio's ``connectionPool`` limits and gRFC A32's
``max_requests``, as a wrapper policy::

    {"circuit_breaker": {"maxRequests": 1024, "maxRequestsPerBackend": 100,
                         "childPolicy": [{"round_robin": {}}]}}

``maxRequests`` (default 1024, as gRFC A32) caps the channel's attempts in
flight; ``maxRequestsPerBackend`` (default: no cap) caps each backend's. A
pick reserves its slots atomically (one lock shared by the picks of the
channel), and the pick's ``done`` releases them, so the limits hold even
for picks made at the same instant on many threads. A backend at its limit
is skipped: the child is asked again (its pick released unused), a few
times, and then the breaker takes the first usable backend with room. When the channel is at ``maxRequests``, or
every usable backend is at ``maxRequestsPerBackend``, the picker raises
:class:`~discovery.balancer.Drop`: the RPC fails at once with UNAVAILABLE
whose details say "circuit breaker" and the limit, even a
``wait_for_ready`` one, without retry. Since no backend was involved no
``done`` is called, so the failure never counts against a backend in
outlier detection, whichever of the two policies is the parent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import (
    NOT_ATTEMPTED,
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    BalancerState,
    DelegatingHelper,
    DoneInfo,
    Drop,
    ErrorPicker,
    Metadata,
    Picker,
    PickResult,
    QueuePicker,
    SubConn,
    build_child,
    usable,
)
from ..config import select_policy
from ..errors import ConfigError

__all__ = ["CircuitBreakerBuilder", "CircuitBreakerConfig"]

# How many picks the child gets to offer a backend with room before the breaker looks itself.
_CHILD_TRIES = 8


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    max_requests: int = 1024
    max_per_backend: int | None = None
    child: str = "round_robin"
    child_config: Any = None


class _Slot:
    """One backend's attempts in flight through this policy (changed under the shared lock)."""

    __slots__ = ("key", "n")

    def __init__(self, key: object) -> None:
        self.key = key
        self.n = 0


class _Limits:
    """The channel's counts: ``total`` in flight, per-backend slots, how many backends are full."""

    __slots__ = ("full", "lock", "slots", "total")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.full = 0
        self.slots: dict[object, _Slot] = {}  # by backend; replaced whole on the control thread


class _Picker(Picker):
    __slots__ = ("_cfg", "_child", "_lim", "_usable", "queue", "reason")

    def __init__(self, child: Picker, lim: _Limits, cfg: CircuitBreakerConfig, usable_now: Sequence[SubConn]
                 ) -> None:
        self._child = child
        self._lim = lim
        self._cfg = cfg
        self._usable = tuple(usable_now)
        self.queue = child.queue
        self.reason = child.reason

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        lim = self._lim
        cfg = self._cfg
        with lim.lock:
            if lim.total >= cfg.max_requests:
                raise Drop(f"circuit breaker: {lim.total} requests in flight, the channel's maxRequests limit "
                           f"is {cfg.max_requests}")
            lim.total += 1
        try:
            r = self._pick_backend(method, metadata)
        except BaseException:
            self._release_total()
            raise
        if r is None:
            self._release_total()
        return r

    def why_none(self, method: str, metadata: Metadata | None) -> tuple[bool, str]:
        # A routing child (subset, ...) decides per RPC whether it waits, and why it failed.
        return self._child.why_none(method, metadata)

    def _pick_backend(self, method: str, metadata: Metadata | None) -> PickResult | None:
        lim = self._lim
        per = self._cfg.max_per_backend
        slots = lim.slots
        # A backend without room sends the child back for another pick (its
        # pick released unused): a rotating child offers the next backend, a
        # random one another draw. After a few, the breaker looks itself.
        for _ in range(min(len(slots), _CHILD_TRIES) or 1):
            r = self._child.pick(method, metadata)
            if r is None:
                return None
            slot = slots.get(r.subconn.backend)
            if slot is None:
                # A backend of an older address set the child still holds: not counted per backend.
                return PickResult(r.subconn, self._releaser(None, r.done))
            if self._reserve(slot):
                return PickResult(r.subconn, self._releaser(slot, r.done))
            if r.done is not None:
                r.done(NOT_ATTEMPTED)
            if lim.full >= len(self._usable):
                break
        if lim.full < len(self._usable):
            for sc in self._usable:
                slot = slots.get(sc.backend)
                if slot is not None and self._reserve(slot):
                    return PickResult(sc, self._releaser(slot, None))
        raise Drop(f"circuit breaker: every usable backend has {per} requests in flight, the "
                   f"maxRequestsPerBackend limit")

    def _reserve(self, slot: _Slot) -> bool:
        per = self._cfg.max_per_backend
        lim = self._lim
        with lim.lock:
            if per is not None and slot.n >= per:
                return False
            slot.n += 1
            if per is not None and slot.n == per:
                lim.full += 1
            return True

    def _release_total(self) -> None:
        with self._lim.lock:
            self._lim.total -= 1

    def _releaser(self, slot: _Slot | None, inner: Callable[[DoneInfo], None] | None) -> Callable[[DoneInfo], None]:
        lim = self._lim
        per = self._cfg.max_per_backend

        def done(info: DoneInfo) -> None:
            with lim.lock:
                lim.total -= 1
                if slot is not None:
                    # A backend no longer in the address set is not counted in ``full``.
                    if per is not None and slot.n == per and lim.slots.get(slot.key) is slot:
                        lim.full -= 1
                    slot.n -= 1
            if inner is not None:
                inner(info)

        return done


class _ChildHelper(DelegatingHelper):
    def __init__(self, cb: CircuitBreaker) -> None:
        super().__init__(cb.helper)
        self._cb = cb

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        if not isinstance(picker, ErrorPicker | QueuePicker):
            cb = self._cb
            picker = _Picker(picker, cb.limits, cb.cfg, [sc for sc in cb.subconns if usable(sc)])
        self._cb.helper.update_picker(state, picker)


class CircuitBreaker(Balancer):
    """Passes everything to its child; wraps the child's pickers with the limits."""

    def __init__(self, helper: BalancerHelper, cfg: CircuitBreakerConfig) -> None:
        self.helper = helper
        self.cfg = cfg
        self.limits = _Limits()
        self.subconns: tuple[SubConn, ...] = ()
        self._child = build_child(_ChildHelper(self), cfg.child, cfg.child_config)

    def update_state(self, state: BalancerState) -> None:
        self.subconns = state.subconns
        lim = self.limits
        old = lim.slots
        # A backend that stays keeps its count; its RPCs still in flight release it.
        lim.slots = {sc.backend: old.get(sc.backend) or _Slot(sc.backend) for sc in state.subconns}
        with lim.lock:
            per = self.cfg.max_per_backend
            lim.full = 0 if per is None else sum(1 for s in lim.slots.values() if s.n >= per)
        self._child.update_state(BalancerState(state.subconns, state.resolver_state, self.cfg.child_config))

    def subconn_state(self, subconn: SubConn) -> None:
        self._child.subconn_state(subconn)

    def resolver_error(self, error: Exception) -> None:
        self._child.resolver_error(error)

    def close(self) -> None:
        self._child.close()


def _limit(raw: Mapping[str, Any], key: str, key_path: str) -> int | None:
    v = raw.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"expected an integer >= 1, got {v!r}", key_path=f"{key_path}.{key}")
    return v


class CircuitBreakerBuilder(BalancerBuilder):
    name: ClassVar[str] = "circuit_breaker"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> CircuitBreakerConfig:
        unknown = set(config) - {"maxRequests", "maxRequestsPerBackend", "childPolicy"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for circuit_breaker; "
                              "expected maxRequests, maxRequestsPerBackend, childPolicy", key_path=key_path)
        child, child_cfg = select_policy(config.get("childPolicy", [{"round_robin": {}}]), None,
                                         f"{key_path}.childPolicy")
        if child == self.name:
            raise ConfigError("childPolicy cannot be circuit_breaker itself", key_path=f"{key_path}.childPolicy")
        max_requests = _limit(config, "maxRequests", key_path)
        return CircuitBreakerConfig(1024 if max_requests is None else max_requests,
                                    _limit(config, "maxRequestsPerBackend", key_path), child, child_cfg)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return CircuitBreaker(helper, config if isinstance(config, CircuitBreakerConfig) else CircuitBreakerConfig())
