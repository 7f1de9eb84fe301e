"""What the routing parents share: backends split into groups, one child policy per group.

``subset`` groups backends by an attribute value, ``priority_failover`` by
``Address.priority`` and ``zone_aware`` by ``Address.zone``. Each group has
its own child policy instance (built with :func:`~discovery.balancer.build_child`
under a :class:`~discovery.balancer.DelegatingHelper`), so per-group state
such as a round-robin position, outlier statistics or a hash ring stays with
its group. The parent's picker routes an RPC to one group's picker and
returns that picker's :class:`~discovery.balancer.PickResult` unchanged, so
the child's ``done`` callbacks reach it untouched.
"""

from __future__ import annotations

import abc
import random
from bisect import bisect_right
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import grpc

from ..balancer import (
    Balancer,
    BalancerHelper,
    BalancerState,
    DelegatingHelper,
    ErrorPicker,
    Metadata,
    Picker,
    PickResult,
    QueuePicker,
    SubConn,
    aggregate_state,
    build_child,
)
from ..config import select_policy
from ..errors import ConfigError

__all__ = ["Group", "GroupBalancer", "WeightedPicker", "first_available", "parse_child", "percent"]

_C = grpc.ChannelConnectivity


class Group:
    """One group: its key, its backends and its child policy's latest (state, picker)."""

    __slots__ = ("balancer", "key", "picker", "state", "subconns")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.subconns: tuple[SubConn, ...] = ()
        self.state: grpc.ChannelConnectivity = _C.CONNECTING
        self.picker: Picker = QueuePicker("starting")
        self.balancer: Balancer


class _GroupHelper(DelegatingHelper):
    def __init__(self, parent: GroupBalancer, group: Group) -> None:
        super().__init__(parent.helper)
        self._parent = parent
        self._group = group

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        self._group.state = state
        self._group.picker = picker
        self._parent.child_changed(self._group)


class GroupBalancer(Balancer):
    """Keeps one child per group and publishes :meth:`make_picker` whenever a child's
    picker or a backend's state changes. Control thread only.

    Subclasses write :meth:`partition` (the groups, in order) and
    :meth:`make_picker`; :meth:`counts_as_healthy` is there for policies that
    weigh groups by health.
    """

    def __init__(self, helper: BalancerHelper, child: str, child_config: Any) -> None:
        self.helper = helper
        self.child = child
        self.child_config = child_config
        self.groups: dict[Hashable, Group] = {}
        self.state = BalancerState(())
        self._members: dict[SubConn, list[Group]] = {}
        # Last settled health of each backend (READY and healthy, or not), so
        # that one reconnecting (IDLE, CONNECTING) keeps counting as it last
        # was; one never settled yet counts as healthy, as a new host does in
        # Envoy until a check says otherwise.
        self._settled: dict[SubConn, bool] = {}
        self._busy = False
        self._published: tuple[object, ...] | None = None
        self._closed = False

    # -- for subclasses ------------------------------------------------------

    @abc.abstractmethod
    def partition(self, subconns: tuple[SubConn, ...]) -> Mapping[Hashable, tuple[SubConn, ...]]:
        """The groups (none empty) for this address set, in the order they are tried."""

    @abc.abstractmethod
    def make_picker(self) -> tuple[grpc.ChannelConnectivity, Picker]:
        """The aggregate state and picker over :attr:`groups` as they are now."""

    def inputs(self) -> Hashable:
        """Anything besides the children's pickers that :meth:`make_picker` reads (health counts)."""
        return None

    def counts_as_healthy(self, sc: SubConn) -> bool:
        s = sc.state
        if s is _C.READY:
            return sc.healthy
        if s is _C.TRANSIENT_FAILURE:
            return False
        return self._settled.get(sc, True)

    def healthy_count(self, subconns: Sequence[SubConn]) -> int:
        return sum(1 for sc in subconns if self.counts_as_healthy(sc))

    # -- Balancer -------------------------------------------------------------

    def update_state(self, state: BalancerState) -> None:
        self.state = state
        parts = self.partition(state.subconns)
        self._busy = True
        try:
            for key in [k for k in self.groups if k not in parts]:
                self.groups.pop(key).balancer.close()
            groups: dict[Hashable, Group] = {}
            members: dict[SubConn, list[Group]] = {}
            for key, scs in parts.items():
                g = self.groups.get(key)
                if g is None:
                    g = Group(key)
                    g.balancer = build_child(_GroupHelper(self, g), self.child, self.child_config)
                g.subconns = scs
                groups[key] = g
                for sc in scs:
                    members.setdefault(sc, []).append(g)
            self.groups = groups
            self._members = members
            self._settled = {sc: self._settled.get(sc, True) for sc in state.subconns}
            for sc in state.subconns:
                self._note(sc)
            for g in groups.values():
                g.balancer.update_state(BalancerState(g.subconns, state.resolver_state, self.child_config))
        finally:
            self._busy = False
        self._publish()

    def subconn_state(self, subconn: SubConn) -> None:
        groups = self._members.get(subconn)
        if groups is None:
            return
        self._note(subconn)
        self._busy = True
        try:
            for g in groups:
                g.balancer.subconn_state(subconn)
        finally:
            self._busy = False
        self._publish()

    def resolver_error(self, error: Exception) -> None:
        for g in self.groups.values():
            g.balancer.resolver_error(error)

    def close(self) -> None:
        self._closed = True
        for g in self.groups.values():
            g.balancer.close()
        self.groups = {}

    # -- internals ------------------------------------------------------------

    def child_changed(self, group: Group) -> None:
        # While the parent itself drives its children (an update), it publishes
        # once at the end; a child publishing on its own (a timer, an ejection)
        # is published at once.
        if not self._busy and not self._closed and self.groups.get(group.key) is group:
            self._publish()

    def _note(self, sc: SubConn) -> None:
        if sc.state is _C.READY:
            self._settled[sc] = sc.healthy
        elif sc.state is _C.TRANSIENT_FAILURE:
            self._settled[sc] = False

    def _publish(self) -> None:
        if self._closed:
            return
        if not self.groups:
            key: tuple[object, ...] = ("empty",)
            if key != self._published:
                self._published = key
                self.helper.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker("no addresses"))
            return
        # The parent's picker reads the children's pickers and states and the
        # subclass's inputs; with none of them changed, the last one stands.
        key = (tuple((g.key, g.state, g.picker) for g in self.groups.values()), self.inputs())
        if key == self._published:
            return
        self._published = key
        state, picker = self.make_picker()
        self.helper.update_picker(state, picker)


class WeightedPicker(Picker):
    """Sends each RPC to one of several pickers at random, in proportion to ``weights``.

    One random draw and a binary search per pick; the chosen picker's result
    is returned as it is. ``rand`` is injectable (seeded in tests).
    """

    __slots__ = ("_cum", "_last", "_pickers", "_rand", "_total", "queue", "reason")

    def __init__(self, pickers: Sequence[Picker], weights: Sequence[float],
                 rand: Callable[[], float] = random.random) -> None:
        self._pickers = tuple(pickers)
        cum: list[float] = []
        total = 0.0
        for w in weights:
            total += w
            cum.append(total)
        self._cum = cum
        self._total = total
        self._last = len(cum) - 1
        self._rand = rand
        self.queue = any(p.queue for p in self._pickers)
        self.reason = "; ".join(p.reason for p in self._pickers if p.reason)

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        i = bisect_right(self._cum, self._rand() * self._total)
        # random() < 1, but the product can round up to the total itself.
        return self._pickers[i if i <= self._last else self._last].pick(method, metadata)

    def why_none(self, method: str, metadata: Metadata | None) -> tuple[bool, str]:
        # The group a failed pick went to is not known here: wait if any group
        # may still serve it, and quote every group's reason.
        answers = [p.why_none(method, metadata) for p in self._pickers]
        return any(q for q, _ in answers), "; ".join(r for _, r in answers if r)


def first_available(groups: Sequence[Group], label: Callable[[Group], str]) -> tuple[grpc.ChannelConnectivity,
                                                                                    Picker]:
    """Nothing healthy anywhere: the first group still connecting (RPCs wait for it),
    else a failing picker quoting every group's reason."""
    state = aggregate_state([g.state for g in groups])
    for g in groups:
        if g.state is not _C.TRANSIENT_FAILURE:
            return state, g.picker
    return state, ErrorPicker("; ".join(f"{label(g)}: {g.picker.reason}" for g in groups))


def percent(raw: Mapping[str, Any], key: str, default: int, path: str) -> int:
    """An integer percentage >= 0 (Envoy's overprovisioning factor is one: 140 means 1.4)."""
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"expected an integer percentage >= 0 (140 means 1.4), got {v!r}",
                          key_path=f"{path}.{key}")
    return v


def parse_child(raw: Mapping[str, Any], path: str, me: str) -> tuple[str, Any]:
    """``childPolicy`` (a loadBalancingConfig list; round_robin by default), not ``me`` itself."""
    child, cfg = select_policy(raw.get("childPolicy", [{"round_robin": {}}]), None, f"{path}.childPolicy")
    if child == me:
        raise ConfigError(f"childPolicy cannot be {me} itself", key_path=f"{path}.childPolicy")
    return child, cfg


def check_keys(raw: Any, path: str, allowed: set[str], name: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected an object of {name} options, got {raw!r}", key_path=path)
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for {name}; "
                          f"expected some of {sorted(allowed)}", key_path=path)
    return raw
