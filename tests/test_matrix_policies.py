"""Every shipped balancing policy x every call shape, sync and asyncio.

Each policy is reached through its ``discovery.balancers`` entry point, as a
third-party one would be, and serves every call shape through the one pick
and ``done`` path: every RPC succeeds, traffic reaches more than one backend
where the policy spreads it, and no attempt is left in flight (each ``done``
was called, so policies that count in-flight RPCs are balanced again).
"""

from __future__ import annotations

from typing import Any

import pytest
from callshapes import SHAPES

from discovery import registry
from discovery.testing import wait_ready
from discovery.testing.servers import BackendServer

# (policy config, request metadata, whether RPCs spread over several backends)
POLICIES: dict[str, tuple[dict[str, Any], tuple[tuple[str, str], ...] | None, bool]] = {
    "pick_first": ({}, None, False),
    "round_robin": ({}, None, True),
    "weighted_round_robin": ({"blackoutPeriod": "0s"}, None, True),
    "least_request": ({}, None, True),
    "peak_ewma": ({}, None, True),
    "circuit_breaker": ({"maxRequestsPerBackend": 50, "childPolicy": [{"round_robin": {}}]}, None, True),
    "outlier_detection": ({"childPolicy": [{"least_request": {}}]}, None, True),
    # One key always goes to one backend: the ring is what spreads keys.
    "ring_hash": ({"requestHashHeader": "x-user"}, (("x-user", "alice"),), False),
    "subset": ({"header": "x-version", "attribute": "version", "fallback": "none"}, (("x-version", "v2"),), True),
    "priority_failover": ({}, None, True),
    "zone_aware": ({"localZone": "eu-1a", "minClusterSize": 1}, None, True),
}


def _endpoints(servers: list[BackendServer]) -> dict[str, Any]:
    # Every backend: version v2, priority 0, zone eu-1a, so that every policy
    # (subset, priority_failover, zone_aware) may use all of them.
    return {"endpoints": {s.addr: {"priority": 0, "zone": "eu-1a", "attributes": {"version": "v2"}}
                          for s in servers}}


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_policy_serves_every_call_shape(policy: str, shape: str, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    assert registry.has_balancer(policy), f"{policy} is not installed through its entry point"
    config, metadata, spreads = POLICIES[policy]
    servers = start_backends(3)
    target = "static:///" + ",".join(s.addr for s in servers)
    c = clients(shape, target, service_config={"loadBalancingConfig": [{policy: config}]},
                resolver_config=_endpoints(servers))
    if spreads:
        wait_ready(c.channel, 3)
    outcomes = [c.call(shape, metadata=metadata) for _ in range(12)]
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
    reached = {o.backend for o in outcomes}
    if spreads:
        assert len(reached) >= 2, f"{policy} sent every {shape} RPC to {reached}"
    else:
        assert len(reached) == 1
    c.wait_idle()


@pytest.mark.parametrize("shape", ["unary", "aio_unary"])
def test_circuit_breaker_over_subset_says_which_subset_was_asked_for(shape: str, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    # A wrapper policy passes its routing child's per-RPC answer through (Picker.why_none).
    servers = start_backends(2)
    target = "static:///" + ",".join(s.addr for s in servers)
    sc = {"loadBalancingConfig": [{"circuit_breaker": {"maxRequestsPerBackend": 10, "childPolicy": [
        {"subset": {"header": "x-version", "attribute": "version", "fallback": "none"}}]}}]}
    c = clients(shape, target, service_config=sc, resolver_config=_endpoints(servers))
    wait_ready(c.channel, 2)
    assert c.call(shape, metadata=(("x-version", "v2"),)).ok
    failed = c.call(shape, metadata=(("x-version", "v9"),))
    assert not failed.ok and "'v9'" in (failed.details or ""), failed
    c.wait_idle()
