"""Shared by the routing-policy tests: the four policies registered as a third-party
plugin would be (the installed entry points may predate them), and fake backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import discovery
from discovery.address import Address
from discovery.balancer import Balancer, BalancerBuilder
from discovery.balancers.priority_failover import PriorityFailover, PriorityFailoverBuilder
from discovery.balancers.ring_hash import RingHashBuilder
from discovery.balancers.subset import SubsetBuilder
from discovery.balancers.zone_aware import ZoneAware, ZoneAwareBuilder
from discovery.testing import FakeClock, FakeHelper, FakeSubConn

C = grpc.ChannelConnectivity
BUILDERS: tuple[type[BalancerBuilder], ...] = (RingHashBuilder, SubsetBuilder, PriorityFailoverBuilder,
                                                ZoneAwareBuilder)

_CLASSES: dict[str, Any] = {"priority_failover": PriorityFailover, "zone_aware": ZoneAware}


@pytest.fixture
def routing_policies() -> Iterator[None]:
    """ring_hash, subset, priority_failover and zone_aware registered for one test."""
    for cls in BUILDERS:
        discovery.register_balancer(cls(), replace=True)
    yield
    for cls in BUILDERS:
        discovery.unregister_balancer(cls.name)


def backends(n: int, state: grpc.ChannelConnectivity = C.READY, port0: int = 5000, **fields: Any
             ) -> list[FakeSubConn]:
    """``n`` fake backends on 127.0.0.1:port0+i with the given Address fields."""
    return [FakeSubConn(Address("127.0.0.1", port0 + i, **fields), state=state) for i in range(n)]


def build(name: str, config: dict[str, Any] | None = None, **kwargs: Any) -> tuple[FakeHelper, Balancer]:
    """A FakeHelper and the policy ``name`` built under it with ``config`` parsed as a service config would."""
    h = FakeHelper(FakeClock())
    b = discovery.get_balancer(name)
    parsed = b.parse_config(config or {}, key_path="lb")
    if kwargs:  # test-only constructor arguments (a seeded random source)
        return h, _CLASSES[name](h, parsed, **kwargs)
    return h, b.build(h, parsed)


def chi_square(observed: dict[Any, int], expected: dict[Any, float]) -> float:
    """Pearson's statistic of ``observed`` counts against ``expected`` counts (same keys)."""
    assert set(observed) <= set(expected), f"picked outside the expected set: {set(observed) - set(expected)}"
    return sum((observed.get(k, 0) - e) ** 2 / e for k, e in expected.items())


# Critical values of the chi-square distribution at p = 0.001 by degrees of
# freedom: a correct picker exceeds them once in a thousand runs.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124, 9: 27.877,
            10: 29.588, 11: 31.264}
