"""``zone_aware``: keep traffic in the client's zone while that zone can take it (client-side
zone-aware routing, after Envoy's).

Config::

    {"zone_aware": {"localZone": "eu-1a", "minClusterSize": 6, "overprovisioningFactor": 140,
                    "childPolicy": [{"round_robin": {}}]}}

``localZone`` defaults to ``$DISCOVERY_LOCAL_ZONE`` (read when the config is
parsed; the config wins); one of them is required. Backends are grouped by
``Address.zone`` (static ``endpoints``, Kubernetes EndpointSlice zones,
Consul meta), each zone with its own child policy. With ``h`` the healthy
fraction of the local zone's backends, the local zone takes ``min(1, h x
overprovisioningFactor / 100)`` of the RPCs and the rest is spread over the
other zones in proportion to their healthy backends (all of it stays local
when no other zone has a healthy backend). With fewer than
``minClusterSize`` backends in all, zone awareness is off: RPCs spread over
every zone in proportion to its healthy backends, like one flat pool.
Healthy is counted as ``priority_failover`` counts it.

Unlike Envoy, which compares where its callers are with where the backends
are, a client here does not know how its peers are spread over zones: the
local share depends on the local zone's health alone.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import Balancer, BalancerBuilder, BalancerHelper, Picker, SubConn, aggregate_state
from ..errors import ConfigError
from ._groups import GroupBalancer, WeightedPicker, check_keys, first_available, parse_child, percent

__all__ = ["LOCAL_ZONE_ENV", "ZoneAwareBuilder", "ZoneAwareConfig", "zone_shares"]

LOCAL_ZONE_ENV = "DISCOVERY_LOCAL_ZONE"


@dataclass(frozen=True, slots=True)
class ZoneAwareConfig:
    local_zone: str
    min_cluster_size: int = 6
    overprovisioning: int = 140
    child: str = "round_robin"
    child_config: Any = None


def zone_shares(local: str, zones: Mapping[str, tuple[int, int]], min_cluster_size: int,
                factor: int) -> dict[str, float]:
    """Each zone's share of the RPCs (summing to 1, or all 0 when nothing is healthy)
    for zones of (healthy, backends)."""
    total = sum(n for _, n in zones.values())
    healthy_all = sum(h for h, _ in zones.values())
    if healthy_all == 0:
        return dict.fromkeys(zones, 0.0)
    if total < min_cluster_size or local not in zones:
        return {z: h / healthy_all for z, (h, _) in zones.items()}
    h_local, n_local = zones[local]
    others = healthy_all - h_local
    share = min(1.0, h_local / n_local * factor / 100) if others else 1.0
    out = {z: (1.0 - share) * h / others if others else 0.0 for z, (h, _) in zones.items() if z != local}
    out[local] = share
    return out


class ZoneAware(GroupBalancer):
    def __init__(self, helper: BalancerHelper, config: ZoneAwareConfig,
                 rand: Callable[[], float] = random.random) -> None:
        super().__init__(helper, config.child, config.child_config)
        self.config = config
        self._rand = rand
        self.shares: dict[str, float] = {}  # the last published split (tests read it)

    def partition(self, subconns: tuple[SubConn, ...]) -> Mapping[Hashable, tuple[SubConn, ...]]:
        zones: dict[str, list[SubConn]] = {}
        for sc in subconns:
            zones.setdefault(sc.address.zone, []).append(sc)
        # The local zone first: it is the one waited for when nothing is healthy.
        local = self.config.local_zone
        order = sorted(zones, key=lambda z: (z != local, z))
        return {z: tuple(zones[z]) for z in order}

    def inputs(self) -> Hashable:
        return tuple(self.healthy_count(g.subconns) for g in self.groups.values())

    def make_picker(self) -> tuple[grpc.ChannelConnectivity, Picker]:
        cfg = self.config
        groups = list(self.groups.values())
        zones = {str(g.key): (self.healthy_count(g.subconns), len(g.subconns)) for g in groups}
        shares = zone_shares(cfg.local_zone, zones, cfg.min_cluster_size, cfg.overprovisioning)
        self.shares = shares
        used = [(g, shares[str(g.key)]) for g in groups if shares[str(g.key)] > 0]
        if not used:
            return first_available(groups, lambda g: f"zone {g.key or '(none)'!s}")
        state = aggregate_state([g.state for g, _ in used])
        if len(used) == 1:
            return state, used[0][0].picker
        return state, WeightedPicker([g.picker for g, _ in used], [s for _, s in used], self._rand)


class ZoneAwareBuilder(BalancerBuilder):
    name: ClassVar[str] = "zone_aware"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> ZoneAwareConfig:
        raw = check_keys(config, key_path, {"localZone", "minClusterSize", "overprovisioningFactor", "childPolicy"},
                         self.name)
        zone = raw.get("localZone")
        if zone is None:
            zone = os.environ.get(LOCAL_ZONE_ENV) or None
            if zone is None:
                raise ConfigError(f"required: the client's own zone (or set ${LOCAL_ZONE_ENV})",
                                  key_path=f"{key_path}.localZone")
        elif not isinstance(zone, str) or not zone:
            raise ConfigError(f"expected a zone name, got {zone!r}", key_path=f"{key_path}.localZone")
        size = raw.get("minClusterSize", 6)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"expected an integer >= 0, got {size!r}", key_path=f"{key_path}.minClusterSize")
        factor = percent(raw, "overprovisioningFactor", 140, key_path)
        child, child_cfg = parse_child(raw, key_path, self.name)
        return ZoneAwareConfig(zone, size, factor, child, child_cfg)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        if not isinstance(config, ZoneAwareConfig):
            config = self.parse_config({}, key_path=self.name)
        return ZoneAware(helper, config)
