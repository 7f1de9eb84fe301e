"""End to end: discovery.insecure_channel on kubernetes: targets, the in-process API server, real grpc backends.

Every endpoint is its own real grpc server (with the health service) on its
own loopback "pod IP" in 127.77.0.0/16, all of a Service's pods on one port,
as in a cluster. Real clock; waits are bounded polls on a condition.

Why 150 real servers for "150 endpoints all get traffic": a server cannot tell
which of its listening ports or addresses a call came in on, so endpoints that
share a server could not be told apart, and the test could not show that
every endpoint was picked. One grpc server per endpoint costs about 0.2 s to
start for all 150 and some 60 MB (measured on this 2-core machine), so the
test uses exactly that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from discovery_kubernetes.testing import KubeApiServer, endpoint, endpoint_port
from k8splugin_support import TOKEN

import discovery
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub

pytestmark = pytest.mark.integration

ROUND_ROBIN = {"loadBalancingConfig": [{"round_robin": {}}]}

StartPods = Callable[..., list[BackendServer]]


@pytest.fixture
def start_pods(request: pytest.FixtureRequest) -> StartPods:
    """``start_pods(n, subnet=1)``: n real grpc servers on 127.77.SUBNET.1..n, all on one port."""
    started: list[BackendServer] = []

    def start(n: int, subnet: int = 1) -> list[BackendServer]:
        first = BackendServer(host=f"127.77.{subnet}.1").start()
        started.append(first)
        pods = [first]
        for i in range(2, n + 1):
            pod = BackendServer(host=f"127.77.{subnet}.{i}", port=first.port, max_workers=4).start()
            started.append(pod)
            pods.append(pod)
        return pods

    def stop_all() -> None:
        for pod in started:
            pod.stop()

    request.addfinalizer(stop_all)
    return start


def grpc_port(pods: list[BackendServer]) -> list[dict[str, Any]]:
    return [endpoint_port(pods[0].port, "grpc")]


def eps(pods: list[BackendServer], **conditions: Any) -> list[dict[str, Any]]:
    return [endpoint(p.host, **conditions) for p in pods]


@pytest.fixture
def channel(kubeconfig: Path) -> Iterator[Callable[..., discovery.Channel]]:
    opened: list[discovery.Channel] = []

    def open_channel(target: str = "kubernetes:///orders:grpc", **options: Any) -> discovery.Channel:
        ch = discovery.insecure_channel(target, service_config=ROUND_ROBIN,
                                        resolver_config={"kubeconfig": str(kubeconfig), **options})
        opened.append(ch)
        return ch

    yield open_channel
    for ch in opened:
        ch.close()


def listed(ch: discovery.Channel) -> set[str]:
    return {b.address for b in ch.backends()}


def addrs(pods: list[BackendServer]) -> set[str]:
    return {p.addr for p in pods}


def call(ch: discovery.Channel, n: int) -> None:
    stub = EchoStub(ch)
    for _ in range(n):
        stub.Unary(b"", timeout=10)


def test_scale_up_and_down(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    a, b, c = start_pods(3)
    api.create_slice("orders-1", "orders", eps([a, b]), grpc_port([a]))
    ch = channel()
    wait_ready(ch, 2)
    call(ch, 20)
    assert a.total == 10 and b.total == 10 and c.total == 0
    api.update_slice("orders-1", endpoints=eps([a, b, c]))  # scale up
    wait_ready(ch, 3)
    call(ch, 30)
    assert c.total == 10
    api.update_slice("orders-1", endpoints=eps([b, c]))  # scale down
    wait_for(lambda: listed(ch) == addrs([b, c]), message="a removed")
    before = a.total, b.total, c.total
    call(ch, 20)
    assert (a.total, b.total, c.total) == (before[0], before[1] + 10, before[2] + 10)


def test_readiness_flips(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    a, b = start_pods(2)
    api.create_slice("orders-1", "orders", eps([a, b]), grpc_port([a]))
    ch = channel()
    wait_ready(ch, 2)
    api.update_slice("orders-1", endpoints=[endpoint(a.host), endpoint(b.host, ready=False)])
    wait_for(lambda: listed(ch) == addrs([a]), message="b not ready")
    before = b.total
    call(ch, 10)
    assert b.total == before
    api.update_slice("orders-1", endpoints=eps([a, b], ready=None))  # absent means ready
    wait_ready(ch, 2)
    call(ch, 10)
    assert b.total == before + 5


def test_a_terminating_pod_drains(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    a, b = start_pods(2)
    api.create_slice("orders-1", "orders", eps([a, b]), grpc_port([a]))
    ch = channel()
    wait_ready(ch, 2)
    stub = EchoStub(ch)
    b.unary_gate.clear()  # b holds the calls it gets
    held = [stub.Unary.future(b"", timeout=20) for _ in range(2)]  # round robin: one of them lands on b
    wait_for(lambda: b.active == 1, message="a call in flight on b")
    api.update_slice("orders-1", endpoints=[endpoint(a.host),
                                            endpoint(b.host, ready=False, serving=True, terminating=True)])
    wait_for(lambda: listed(ch) == addrs([a]), message="b terminating")
    call(ch, 10)  # new calls avoid b ...
    assert b.total == 1
    b.unary_gate.set()  # ... and the one it holds still completes
    assert sorted(f.result(timeout=10) for f in held) == sorted([a.name.encode(), b.name.encode()])


def test_serving_terminating_pods_kept_when_asked(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    a, b = start_pods(2)
    api.create_slice("orders-1", "orders", [endpoint(a.host),
                                            endpoint(b.host, ready=False, serving=True, terminating=True)],
                     grpc_port([a]))
    ch = channel(keep_serving_terminating=True)
    wait_ready(ch, 2)
    call(ch, 10)
    assert b.total == 5


def test_150_endpoints_over_2_slices_all_get_traffic(api: KubeApiServer, start_pods: StartPods,
                                                     channel: Any) -> None:
    t0 = time.monotonic()
    first, second = start_pods(75, subnet=1), start_pods(75, subnet=2)
    started = time.monotonic() - t0
    api.create_slice("orders-a", "orders", eps(first), grpc_port(first))
    api.create_slice("orders-b", "orders", eps(second), grpc_port(second))
    ch = channel()
    wait_ready(ch, 150, timeout=60)
    assert len(ch.backends()) == 150
    call(ch, 450)
    counts = sorted(p.total for p in first + second)
    assert counts[0] >= 1, "an endpoint got no traffic"
    assert counts == [3] * 150  # round robin over every endpoint of both slices
    print(f"150 servers started in {started:.2f}s; all served within {time.monotonic() - t0:.2f}s")


def test_the_same_address_in_two_slices_is_counted_once(api: KubeApiServer, start_pods: StartPods,
                                                        channel: Any) -> None:
    a, b, c = start_pods(3)
    api.create_slice("orders-1", "orders", eps([a, b]), grpc_port([a]))
    api.create_slice("orders-2", "orders", eps([b, c]), grpc_port([a]))
    ch = channel()
    wait_ready(ch, 3)
    assert len(ch.backends()) == 3
    call(ch, 30)
    assert (a.total, b.total, c.total) == (10, 10, 10)  # b is not picked twice as often
    api.delete_slice("orders-1")  # b stays: it is still in orders-2
    wait_for(lambda: listed(ch) == addrs([b, c]), message="a removed, b kept")


def test_410_relist_with_zero_failed_rpcs(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    a, b, c = start_pods(3)
    api.create_slice("orders-1", "orders", eps([a, b]), grpc_port([a]))
    ch = channel()
    wait_ready(ch, 2)
    failures: list[BaseException] = []
    done = threading.Event()
    calls = [0]

    def traffic() -> None:
        stub = EchoStub(ch)
        while not done.is_set():
            try:
                stub.Unary(b"", timeout=5)
                calls[0] += 1
            except grpc.RpcError as exc:
                failures.append(exc)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        wait_for(lambda: calls[0] > 20, message="traffic flowing")
        api.hang_watches()  # changes happen while the watch is deaf ...
        api.update_slice("orders-1", endpoints=eps([b, c]))
        api.compact()  # ... and the history that would replay them is gone
        lists = api.lists_served
        api.break_watches()
        wait_for(lambda: listed(ch) == addrs([b, c]), timeout=10, message="relisted")
        assert api.lists_served == lists + 1
        mark = c.total
        wait_for(lambda: c.total > mark + 10, message="c serving")
        # However slowly the machine ran the traffic, it ran through all of the above.
        wait_for(lambda: calls[0] > 50, message="50 calls")
    finally:
        done.set()
        t.join(10)
    assert failures == []


def test_a_hung_watch_is_recovered_within_watch_timeout(api: KubeApiServer, start_pods: StartPods,
                                                        channel: Any) -> None:
    a, b = start_pods(2)
    api.create_slice("orders-1", "orders", eps([a]), grpc_port([a]))
    ch = channel(watch_timeout="1s")
    wait_ready(ch, 1)
    api.wait_for(lambda s: s.open_watches == 1)
    hung = time.monotonic()
    api.hang_watches()
    api.update_slice("orders-1", endpoints=eps([a, b]))
    wait_for(lambda: listed(ch) == addrs([a, b]), timeout=10, message="b seen after the hang")
    took = time.monotonic() - hung
    # Within watch_timeout, plus the one-second floor between two watches of a resolver.
    assert took < 1.0 + 1.0 + 0.5, took
    wait_ready(ch, 2)
    call(ch, 10)
    assert b.total == 5


def test_api_server_down_keeps_the_last_set(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    a, b = start_pods(2)
    api.create_slice("orders-1", "orders", eps([a, b]), grpc_port([a]))
    ch = channel()
    wait_ready(ch, 2)
    api.stop()
    api.wait_for(lambda s: s.open_watches == 0)
    call(ch, 20)  # the API server is gone; the backends are not
    assert a.total == 10 and b.total == 10
    api.update_slice("orders-1", endpoints=eps([a]))
    api.start()
    wait_for(lambda: listed(ch) == addrs([a]), timeout=10, message="relisted after the restart")


def test_zone_and_node_in_backend_snapshots(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    [a] = start_pods(1)
    api.create_slice("orders-1", "orders", [endpoint(a.host, zone="eu-1a", node="node-7", pod="orders-0")],
                     grpc_port([a]))
    ch = channel()
    wait_ready(ch, 1)
    [snap] = ch.backends()
    assert snap.zone == "eu-1a"
    assert snap.attributes["node"] == "node-7" and snap.attributes["pod"] == "orders-0"


def test_k8s_alias_and_namespace_in_the_authority(api: KubeApiServer, start_pods: StartPods, channel: Any) -> None:
    [a] = start_pods(1)
    api.create_slice("orders-1", "orders", eps([a]), grpc_port([a]), namespace="shop")
    ch = channel("k8s://shop/orders:grpc")
    wait_ready(ch, 1)
    call(ch, 3)
    assert a.total == 3


def test_the_token_is_never_logged_at_debug(api: KubeApiServer, start_pods: StartPods, channel: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    [a] = start_pods(1)
    api.create_slice("orders-1", "orders", eps([a]), grpc_port([a]))
    ch = channel(watch_timeout="500ms")
    wait_ready(ch, 1)
    api.set_tokens("not-the-one-in-the-kubeconfig")
    api.break_watches()
    wait_for(lambda: any(r.status == 401 for r in api.requests), message="a 401")
    call(ch, 3)
    ch.close()
    assert "401" in caplog.text
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
