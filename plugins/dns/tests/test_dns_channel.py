"""End to end: discovery.insecure_channel on a dns: target, real Knot, real grpc backends.

Real clock and default resolver settings throughout; waits are bounded polls on
a condition.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from discovery_dns.testing import KnotServer
from dnsplugin_support import Backends, health_check, poll_until

import discovery

pytestmark = pytest.mark.integration

if not hasattr(discovery, "insecure_channel"):  # pragma: no cover - the core is not there yet
    pytest.skip("discovery.insecure_channel is not available yet", allow_module_level=True)

ROUND_ROBIN = {"loadBalancingConfig": [{"round_robin": {}}]}


@pytest.fixture
def backends() -> Iterator[Backends]:
    with Backends(["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as b:
        yield b


def ready(ch: discovery.Channel) -> set[str]:
    return {b.address for b in ch.backends() if b.state == grpc.ChannelConnectivity.READY}


def listed(ch: discovery.Channel) -> set[str]:
    return {b.address for b in ch.backends()}


def open_channel(knot: KnotServer, name: str, port: int) -> discovery.Channel:
    return discovery.insecure_channel(f"dns://{knot.address}/{name}.test.internal:{port}", service_config=ROUND_ROBIN)


def test_traffic_spreads_over_all_a_records(knot: KnotServer, backends: Backends) -> None:
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        knot.add("orders", "A", host, ttl=2)
    ch = open_channel(knot, "orders", backends.port)
    try:
        want = {f"127.0.0.{n}:{backends.port}" for n in (2, 3, 4)}
        assert poll_until(lambda: ready(ch) == want, 10.0), ch.backends()
        for _ in range(30):
            health_check(ch)
        counts = backends.snapshot()
        assert set(counts) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
        assert all(c >= 5 for c in counts.values()), counts
    finally:
        ch.close()


def test_a_record_added_with_ttl_2s_carries_traffic_within_10s(knot: KnotServer, backends: Backends) -> None:
    knot.add("orders", "A", "127.0.0.2", ttl=2)
    ch = open_channel(knot, "orders", backends.port)
    try:
        health_check(ch, timeout=5, wait_for_ready=True)
        added = time.monotonic()
        knot.add("orders", "A", "127.0.0.3", ttl=2)

        def new_backend_served() -> bool:
            health_check(ch)
            return backends.count("127.0.0.3") > 0

        assert poll_until(new_backend_served, 10.0), ch.backends()
        elapsed = time.monotonic() - added
        print(f"new A record carried traffic after {elapsed:.2f}s (default settings)")
        assert elapsed < 10.0
    finally:
        ch.close()


def test_a_removed_record_gets_no_new_rpcs(knot: KnotServer, backends: Backends) -> None:
    knot.add("orders", "A", "127.0.0.2", ttl=2)
    knot.add("orders", "A", "127.0.0.3", ttl=2)
    ch = open_channel(knot, "orders", backends.port)
    gone = f"127.0.0.3:{backends.port}"
    try:
        assert poll_until(lambda: len(ready(ch)) == 2, 10.0), ch.backends()
        for _ in range(10):
            health_check(ch)
        assert backends.count("127.0.0.3") > 0
        knot.delete("orders", "A", "127.0.0.3")
        assert poll_until(lambda: gone not in listed(ch), 10.0), ch.backends()
        before = backends.snapshot()
        for _ in range(20):
            health_check(ch)
        after = backends.snapshot()
        assert after["127.0.0.3"] == before["127.0.0.3"]
        assert after["127.0.0.2"] == before["127.0.0.2"] + 20
    finally:
        ch.close()


def test_nxdomain_fails_fast_naming_the_name(knot: KnotServer, backends: Backends) -> None:
    ch = open_channel(knot, "missing", backends.port)
    try:

        def failed_fast_with_note() -> bool:
            try:
                health_check(ch, timeout=2)
            except grpc.RpcError as err:
                return err.code() == grpc.StatusCode.UNAVAILABLE and "missing.test.internal" in (err.details() or "")
            return False

        assert poll_until(failed_fast_with_note, 10.0)
    finally:
        ch.close()


def test_srv_target_through_the_channel(knot: KnotServer, backends: Backends) -> None:
    knot.add("b2", "A", "127.0.0.2")
    knot.add("b3", "A", "127.0.0.3")
    knot.add("_grpc._tcp.orders", "SRV", f"0 10 {backends.port} b2", f"0 30 {backends.port} b3")
    ch = discovery.insecure_channel(f"dns://{knot.address}/_grpc._tcp.orders.test.internal", service_config=ROUND_ROBIN)
    try:
        assert poll_until(lambda: len(ready(ch)) == 2, 10.0), ch.backends()
        for _ in range(10):
            health_check(ch)
        assert backends.count("127.0.0.2") > 0 and backends.count("127.0.0.3") > 0
    finally:
        ch.close()


def test_srv_tiers_all_lets_priority_failover_fail_over_on_backend_health(knot: KnotServer) -> None:
    """Every SRV tier published (srv_tiers = "all"): priority_failover keeps RPCs on
    priority 0 and moves them to priority 1 when its backend goes down, with DNS unchanged."""
    from discovery.balancers.priority_failover import PriorityFailoverBuilder
    from discovery.testing.servers import BackendServer, EchoStub

    discovery.register_balancer(PriorityFailoverBuilder(), replace=True)
    primary = BackendServer("127.0.0.2").start()
    backup = BackendServer("127.0.0.3").start()
    try:
        knot.add("p0", "A", "127.0.0.2")
        knot.add("p1", "A", "127.0.0.3")
        knot.add("_grpc._tcp.tiers", "SRV", f"0 10 {primary.port} p0", f"1 10 {backup.port} p1")
        with discovery.insecure_channel(f"dns://{knot.address}/_grpc._tcp.tiers.test.internal",
                                        service_config={"loadBalancingConfig": [{"priority_failover": {}}]},
                                        resolver_config={"srv_tiers": "all"}) as ch:
            stub = EchoStub(ch)

            def served_by() -> str | None:
                try:
                    return stub.Unary(b"", timeout=5).decode()  # type: ignore[no-any-return]
                except grpc.RpcError:
                    return None

            assert poll_until(lambda: listed(ch) == {primary.addr, backup.addr}, 10.0), ch.backends()
            assert {served_by() for _ in range(5)} == {primary.addr}
            primary.stop()
            assert poll_until(lambda: served_by() == backup.addr, 10.0)
    finally:
        primary.stop()
        backup.stop()
        discovery.unregister_balancer("priority_failover")
