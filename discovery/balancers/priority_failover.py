"""``priority_failover``: Envoy's priority levels, on ``Address.priority`` (0 is preferred).

Config::

    {"priority_failover": {"overprovisioningFactor": 140, "childPolicy": [{"round_robin": {}}]}}

Backends are grouped into tiers by ``Address.priority`` (static ``endpoints``,
DNS SRV priority, Consul), each tier with its own child policy. Traffic is
shared between tiers as Envoy shares it between priority levels: a tier's
health is ``min(100, overprovisioningFactor x healthy / backends)`` percent
(integer arithmetic, as Envoy's), tiers take load in order, each as much of
what is left as its health allows (scaled when the healths add up past 100),
and rounding leftovers go to the first tier with any health. With the default
factor of 140 a tier keeps all its traffic while at least 72 % of it is
healthy (5 of 7); below that the shortfall spills to the next tier in
proportion, and comes back as the tier recovers.

Healthy means READY and passing health checks and, with ``outlier_detection``
as the parent, not ejected. A backend reconnecting counts as it last was; a
new one counts as healthy until it has connected or failed (Envoy's new
hosts), so a starting channel waits for tier 0 rather than spill. With
nothing healthy in any tier, RPCs wait for the first tier still connecting,
or fail fast naming every tier's state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import Balancer, BalancerBuilder, BalancerHelper, Picker, SubConn, aggregate_state
from ._groups import GroupBalancer, WeightedPicker, check_keys, first_available, parse_child, percent

__all__ = ["PriorityFailoverBuilder", "PriorityFailoverConfig", "priority_loads"]


@dataclass(frozen=True, slots=True)
class PriorityFailoverConfig:
    overprovisioning: int = 140
    child: str = "round_robin"
    child_config: Any = None


def priority_loads(tiers: list[tuple[int, int]], factor: int) -> list[int]:
    """Envoy's per-priority load (percent, summing to 100) for tiers of (healthy, backends).

    All zeros when no tier has any health.
    """
    health = [min(100, factor * healthy // total) if total else 0 for healthy, total in tiers]
    normalized = min(100, sum(health))
    if normalized == 0:
        return [0] * len(tiers)
    left = 100
    loads = []
    for h in health:
        load = min(left, h * 100 // normalized)
        left -= load
        loads.append(load)
    if left:
        first = next(i for i, h in enumerate(health) if h > 0)
        loads[first] += left
    return loads


class PriorityFailover(GroupBalancer):
    def __init__(self, helper: BalancerHelper, config: PriorityFailoverConfig,
                 rand: Callable[[], float] = random.random) -> None:
        super().__init__(helper, config.child, config.child_config)
        self.config = config
        self._rand = rand
        self.loads: list[int] = []  # the last published split, per tier in order (tests read it)

    def partition(self, subconns: tuple[SubConn, ...]) -> Mapping[Hashable, tuple[SubConn, ...]]:
        tiers: dict[int, list[SubConn]] = {}
        for sc in subconns:
            tiers.setdefault(sc.address.priority, []).append(sc)
        return {p: tuple(tiers[p]) for p in sorted(tiers)}

    def inputs(self) -> Hashable:
        return tuple(self.healthy_count(g.subconns) for g in self.groups.values())

    def make_picker(self) -> tuple[grpc.ChannelConnectivity, Picker]:
        groups = list(self.groups.values())
        loads = priority_loads([(self.healthy_count(g.subconns), len(g.subconns)) for g in groups],
                               self.config.overprovisioning)
        self.loads = loads
        if not any(loads):
            return first_available(groups, lambda g: f"priority {g.key}")
        used = [(g, load) for g, load in zip(groups, loads, strict=True) if load]
        state = aggregate_state([g.state for g, _ in used])
        if len(used) == 1:
            return state, used[0][0].picker
        return state, WeightedPicker([g.picker for g, _ in used], [load for _, load in used], self._rand)


class PriorityFailoverBuilder(BalancerBuilder):
    name: ClassVar[str] = "priority_failover"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> PriorityFailoverConfig:
        raw = check_keys(config, key_path, {"overprovisioningFactor", "childPolicy"}, self.name)
        factor = percent(raw, "overprovisioningFactor", 140, key_path)
        child, child_cfg = parse_child(raw, key_path, self.name)
        return PriorityFailoverConfig(factor, child, child_cfg)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return PriorityFailover(helper, config if isinstance(config, PriorityFailoverConfig)
                                else self.parse_config({}, key_path=self.name))
