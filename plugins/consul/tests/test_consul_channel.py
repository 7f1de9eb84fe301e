"""End to end: discovery.insecure_channel on consul: targets, the in-process agent, real grpc backends.

Default resolver settings and the real clock; waits are bounded polls on a
condition (a call counter, the channel's backend list).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from consulplugin_support import MakeAgent
from discovery_consul.testing import ConsulTestAgent

import discovery
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub

pytestmark = pytest.mark.integration

ROUND_ROBIN = {"loadBalancingConfig": [{"round_robin": {}}]}
SECRET = "9d1e-channel-s3cret-token"
Backends = Callable[[int], list[BackendServer]]
Two = tuple[BackendServer, BackendServer, discovery.Channel, EchoStub]


def register(agent: ConsulTestAgent, b: BackendServer, **kwargs: object) -> None:
    agent.register("orders", b.port, address=b.host, service_id=b.name, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def channel(agent: ConsulTestAgent) -> Iterator[Callable[..., discovery.Channel]]:
    made: list[discovery.Channel] = []

    def make(query: str = "", **resolver_config: object) -> discovery.Channel:
        ch = discovery.insecure_channel(f"consul://{agent.address}/orders{query}", service_config=ROUND_ROBIN,
                                        resolver_config=resolver_config)
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


def listed(ch: discovery.Channel) -> set[str]:
    return {b.address for b in ch.backends()}


@pytest.fixture
def two(agent: ConsulTestAgent, backends: Backends,
        channel: Callable[..., discovery.Channel]) -> Two:
    """Backends b0 and b1 registered and passing, and a round-robin channel with both READY."""
    b0, b1 = backends(2)
    register(agent, b0)
    register(agent, b1)
    ch = channel()
    wait_ready(ch, 2)
    return b0, b1, ch, EchoStub(ch)


def test_register_brings_traffic_within_a_second(agent: ConsulTestAgent, backends: Backends,
                                                 channel: Callable[..., discovery.Channel]) -> None:
    b0, b1 = backends(2)
    register(agent, b0)
    ch = channel()
    stub = EchoStub(ch)
    wait_ready(ch, 1)
    agent.wait_for_pending("orders")
    t0 = time.monotonic()
    register(agent, b1)
    served = set()
    while b"b1" not in served:
        served.add(stub.Unary(b"", timeout=5))
        assert time.monotonic() - t0 < 1.0, "no traffic to the new backend within 1 s"


def test_deregister_drains_in_flight_streams(agent: ConsulTestAgent, two: Two) -> None:
    b0, b1, ch, stub = two
    for b in (b0, b1):
        b.gate.clear()  # hold every stream open after its call started
    streams = [stub.ServerStream(b"3", timeout=30) for _ in range(2)]
    wait_for(lambda: b0.active == 1 and b1.active == 1, 5, message="one open stream on each backend")
    agent.deregister(b0.name)
    wait_for(lambda: listed(ch) == {b1.addr}, 2, message="b0 removed from the channel")
    b1.gate.set()
    assert {stub.Unary(b"", timeout=5) for _ in range(20)} == {b"b1"}
    b0.gate.set()
    replies = sorted(tuple(s) for s in streams)
    assert replies == [(b"b0",) * 3, (b"b1",) * 3], "the stream on the removed backend finished whole"


def test_a_critical_check_stops_traffic(agent: ConsulTestAgent, two: Two) -> None:
    b0, b1, ch, stub = two
    agent.set_check(f"service:{b0.name}", "critical")
    wait_for(lambda: listed(ch) == {b1.addr}, 2, message="the critical instance left the channel")
    before = b0.total
    assert {stub.Unary(b"", timeout=5) for _ in range(30)} == {b"b1"}
    assert b0.total == before
    agent.set_check(f"service:{b0.name}", "passing")
    wait_for(lambda: listed(ch) == {b0.addr, b1.addr}, 2, message="back when passing again")


def test_agent_down_fails_no_rpc(agent: ConsulTestAgent, two: Two) -> None:
    b0, b1, ch, stub = two
    agent.stop()
    replies = [stub.Unary(b"", timeout=5) for _ in range(100)]
    assert set(replies) == {b"b0", b"b1"}, "the last good set stays in use"
    wait_for(lambda: agent.queries("orders") >= 2, 5)
    assert listed(ch) == {b0.addr, b1.addr}


def test_agent_restart_recovers_within_seconds(agent: ConsulTestAgent, backends: Backends,
                                               channel: Callable[..., discovery.Channel]) -> None:
    b0, b1 = backends(2)
    register(agent, b0)
    for i in range(20):  # a high index the restarted agent will not reach again soon
        agent.set_check(f"service:{b0.name}", "passing", output=str(i))
    ch = channel()
    stub = EchoStub(ch)
    wait_ready(ch, 1)
    agent.wait_for_pending("orders")
    agent.restart()
    t0 = time.monotonic()
    register(agent, b1)
    served = set()
    while b"b1" not in served:
        served.add(stub.Unary(b"", timeout=5))  # none of these may fail
        assert time.monotonic() - t0 < 5.0, "no recovery within 5 s of the restart"


def test_churn_keeps_the_request_rate_bounded(agent: ConsulTestAgent, backends: Backends,
                                              channel: Callable[..., discovery.Channel]) -> None:
    [b0] = backends(1)
    register(agent, b0)
    ch = channel()
    stub = EchoStub(ch)
    wait_ready(ch, 1)
    agent.wait_for_pending("orders")
    start_queries = agent.queries("orders")
    stop = threading.Event()
    touches = 0
    t0 = time.monotonic()
    # The index moves every few milliseconds for 3 s, and at least 200 times however slow the machine is.
    while time.monotonic() - t0 < 3.0 or touches < 200:
        agent.touch("orders")
        touches += 1
        stub.Unary(b"", timeout=5)
        stop.wait(0.005)
    elapsed = time.monotonic() - t0
    queries = agent.queries("orders") - start_queries
    # The token bucket: a burst of 5, then 1 a second (+2: the query pending at the start, one at the end).
    assert queries <= 5 + int(elapsed) + 2, f"{queries} queries for {touches} index changes in {elapsed:.1f} s"


def test_fail_fast_names_the_consul_problem(agent: ConsulTestAgent, backends: Backends,
                                            channel: Callable[..., discovery.Channel]) -> None:
    ch = channel()
    stub = EchoStub(ch)
    agent.wait_for_pending("orders")
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no passing instance of service 'orders'" in (info.value.details() or "")
    agent.stop()
    wait_for(lambda: agent.queries("orders") >= 1, 5)

    def unreachable() -> bool:
        try:
            stub.Unary(b"", timeout=5)
        except grpc.RpcError as exc:
            return "unreachable" in (exc.details() or "")
        return False

    wait_for(unreachable, 5, message="the RPC error names the unreachable agent")


def test_the_token_is_never_logged(request: pytest.FixtureRequest, make_agent: MakeAgent, backends: Backends,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    acl = make_agent(acl_default_policy="deny", tokens={SECRET: ("",)})
    [b0] = backends(1)
    register(acl, b0)
    good = discovery.insecure_channel(f"consul://{acl.address}/orders", resolver_config={"token": SECRET})
    bad = discovery.insecure_channel(f"consul://{acl.address}/orders", resolver_config={"token": SECRET + "x"})
    request.addfinalizer(good.close)
    request.addfinalizer(bad.close)
    assert EchoStub(good).Unary(b"", timeout=5, wait_for_ready=True) == b"b0"
    wait_for(lambda: acl.pending("orders") >= 1, 5)
    with pytest.raises(grpc.RpcError) as info:
        EchoStub(bad).Unary(b"", timeout=5)
    wait_for(lambda: "refused the ACL token" in caplog.text, 5)
    acl.stop()  # connection errors with the token in flight
    wait_for(lambda: "unreachable" in caplog.text, 5)
    assert SECRET not in caplog.text
    assert SECRET not in (info.value.details() or "")
    assert any(r.levelno == logging.DEBUG for r in caplog.records)


def test_config_file(agent: ConsulTestAgent, backends: Backends, tmp_path: Path) -> None:
    [b0] = backends(1)
    register(agent, b0, tags=["v2"])
    path = tmp_path / "discovery.toml"
    path.write_text(
        "[services.orders]\n"
        f'target = "consul://{agent.address}/orders?tag=v2"\n'
        'resolver = { token = "file-token", wait = "30s" }\n'
        "[services.orders.service_config]\n"
        "loadBalancingConfig = [{ round_robin = {} }]\n")
    with discovery.channel_from_config("orders", path) as ch:
        assert EchoStub(ch).Unary(b"", timeout=5, wait_for_ready=True) == b"b0"
    queries = [r for r in agent.requests if r.path == "/v1/health/service/orders"]
    assert queries and all(r.token == "file-token" and r.token_source == "header" for r in queries)


def test_attributes_are_visible_in_backends(agent: ConsulTestAgent, backends: Backends,
                                            channel: Callable[..., discovery.Channel]) -> None:
    [b0] = backends(1)
    agent.register("orders", b0.port, address=b0.host, service_id="o-1", tags=["v2"], meta={"zone": "eu-1a"},
                   weights={"Passing": 7, "Warning": 1})
    ch = channel()
    wait_ready(ch, 1)
    [snap] = ch.backends()
    assert snap.weight == 7
    assert snap.zone == "eu-1a"  # type: ignore[attr-defined]
    attrs = snap.attributes  # type: ignore[attr-defined]
    assert attrs["tags"] == ("v2",) and attrs["meta"]["zone"] == "eu-1a" and attrs["node"] == agent.node
    assert attrs["datacenter"] == "dc1"
