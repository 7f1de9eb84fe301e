"""discovery.metrics: Prometheus metrics of every channel, against real backends on loopback."""

from __future__ import annotations

import asyncio
import collections
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

import discovery
import discovery.aio
import discovery.metrics as dm
from discovery import observe
from discovery.errors import ConfigError
from discovery.testing import ManualResolverBuilder, addresses, wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub, static_target

pytestmark = pytest.mark.integration

UNARY = "/discovery.testing.Echo/Unary"
STREAM = "/discovery.testing.Echo/ServerStream"
RETRY_UNAVAILABLE = {"methodConfig": [{
    "name": [{"service": "discovery.testing.Echo"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]}

Start = Callable[..., list[BackendServer]]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    yield reg
    dm.disable_prometheus()


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


def sample(metrics: dm.PrometheusMetrics, name: str, **labels: str) -> float | None:
    for family in metrics.collect():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_every_attempt_is_counted_by_backend_and_code_on_channels_made_before(
        start_backends: Start, registry: CollectorRegistry) -> None:
    bad, good = start_backends(2)
    bad.fail_with = grpc.StatusCode.UNAVAILABLE
    target = static_target([bad, good])
    with discovery.insecure_channel(target, service_config=RETRY_UNAVAILABLE) as ch:
        wait_ready(ch, 2)
        dm.enable_prometheus(registry)  # after the channel was made
        stub = EchoStub(ch)
        for _ in range(6):
            assert stub.Unary(b"x", timeout=5) == good.name.encode()
        # One sample per attempt: what each server saw, with its status.
        assert good.calls["Unary"] == 6
        assert value(registry, "discovery_rpcs_total", target=target, backend=good.addr, method=UNARY,
                     code="OK") == 6
        assert bad.calls["Unary"] > 0
        assert value(registry, "discovery_rpcs_total", target=target, backend=bad.addr, method=UNARY,
                     code="UNAVAILABLE") == bad.calls["Unary"]
        assert value(registry, "discovery_rpcs_total", target=target, backend=bad.addr, method=UNARY,
                     code="OK") == 0
        count = value(registry, "discovery_rpc_duration_seconds_count", target=target, backend=good.addr,
                      method=UNARY)
        assert count == 6
        total = value(registry, "discovery_rpc_duration_seconds_sum", target=target, backend=good.addr,
                      method=UNARY)
        assert 0 < total < 6 * 5
        assert value(registry, "discovery_rpc_duration_seconds_bucket", target=target, backend=good.addr,
                     method=UNARY, le="+Inf") == 6


def test_futures_streams_and_asyncio_report_too(start_backends: Start, registry: CollectorRegistry) -> None:
    (server,) = start_backends(1)
    target = static_target([server])
    dm.enable_prometheus(registry)
    with discovery.insecure_channel(target) as ch:
        stub = EchoStub(ch)
        assert stub.Unary.future(b"x", timeout=5, wait_for_ready=True).result() == server.name.encode()
        assert len(list(stub.ServerStream(b"3", timeout=5))) == 3
        # A stream's attempt ends in grpc's done callback, on another thread.
        wait_for(lambda: value(registry, "discovery_rpcs_total", target=target, backend=server.addr,
                               method=STREAM, code="OK") == 1, message="stream attempt counted")
        assert value(registry, "discovery_rpcs_total", target=target, backend=server.addr, method=UNARY,
                      code="OK") == 1

        async def run() -> float:
            async with discovery.aio.insecure_channel(target) as ach:
                await EchoStub(ach).Unary(b"x", timeout=5, wait_for_ready=True)
                return value(registry, "discovery_backends", target=target, state="READY")

        # Two channels of one target add up: the sync one's RPC and the asyncio one's.
        ready = asyncio.run(run())
        assert ready == 2
        assert value(registry, "discovery_rpcs_total", target=target, backend=server.addr, method=UNARY,
                     code="OK") == 2


def test_backend_states_and_in_flight(start_backends: Start, registry: CollectorRegistry) -> None:
    a, b = start_backends(2)
    target = static_target([a, b])
    dm.enable_prometheus(registry)
    with discovery.insecure_channel(target, service_config={"loadBalancingConfig": [{"pick_first": {}}]}) as ch:
        wait_ready(ch, 1)
        wait_for(lambda: value(registry, "discovery_backends", target=target, state="READY") >= 1)
        assert value(registry, "discovery_backends", target=target, state="SHUTDOWN") == 0
        a.unary_gate.clear()
        try:
            futures = [EchoStub(ch).Unary.future(b"x", timeout=10) for _ in range(2)]
            wait_for(lambda: value(registry, "discovery_backend_in_flight", target=target, backend=a.addr) == 2,
                     message="two RPCs in flight on the first backend")
            assert value(registry, "discovery_backend_in_flight", target=target, backend=b.addr) == 0
        finally:
            a.unary_gate.set()
        for f in futures:
            f.result()
        assert value(registry, "discovery_backend_in_flight", target=target, backend=a.addr) == 0
        a.stop()
        wait_for(lambda: ch.backends()[0].state is not grpc.ChannelConnectivity.READY)

        def gauges_match_the_channel() -> bool:
            seen = collections.Counter(b.state.name for b in ch.backends())
            return all(value(registry, "discovery_backends", target=target, state=s.name) == seen[s.name]
                       for s in grpc.ChannelConnectivity)

        # States move on their own (pick_first connects the second backend): wait until a scrape agrees.
        wait_for(gauges_match_the_channel, message="discovery_backends as the channel reports its backends")


def test_resolver_updates_errors_and_departed_backends(start_backends: Start, registry: CollectorRegistry,
                                                       manual: ManualResolverBuilder) -> None:
    a, b = start_backends(2)
    target = "manual:///svc"
    dm.enable_prometheus(registry)
    with discovery.insecure_channel(target) as ch:
        r = manual.resolver
        r.push(addresses(a.addr, b.addr))
        wait_ready(ch, 2)
        assert value(registry, "discovery_resolver_updates_total", target=target) == 1
        for _ in range(4):
            EchoStub(ch).Unary(b"x", timeout=5)
        assert value(registry, "discovery_rpcs_total", target=target, backend=a.addr, method=UNARY, code="OK") == 2
        r.fail("registry down")
        wait_for(lambda: value(registry, "discovery_resolver_errors_total", target=target) == 1)
        r.push(addresses(b.addr))
        wait_for(lambda: len(ch.backends()) == 1)
        assert value(registry, "discovery_resolver_updates_total", target=target) == 2
        # The departed backend's series are gone; the other's stay.
        assert registry.get_sample_value("discovery_rpcs_total", {"target": target, "backend": a.addr,
                                                                  "method": UNARY, "code": "OK"}) is None
        assert registry.get_sample_value("discovery_backend_in_flight", {"target": target,
                                                                         "backend": a.addr}) is None
        assert value(registry, "discovery_rpcs_total", target=target, backend=b.addr, method=UNARY, code="OK") == 2
    # A closed channel's series go too.
    assert registry.get_sample_value("discovery_resolver_updates_total", {"target": target}) is None
    assert registry.get_sample_value("discovery_rpcs_total", {"target": target, "backend": b.addr,
                                                              "method": UNARY, "code": "OK"}) is None


def test_ejections_are_counted(start_backends: Start, registry: CollectorRegistry) -> None:
    a, b = start_backends(2)
    a.fail_with = grpc.StatusCode.UNAVAILABLE
    target = static_target([a, b])
    sc = {"loadBalancingConfig": [{"outlier_detection": {
        "consecutiveErrors": 2, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
        "childPolicy": [{"round_robin": {}}]}}]}
    dm.enable_prometheus(registry)
    with discovery.insecure_channel(target, service_config=sc) as ch:
        wait_ready(ch, 2)
        stub = EchoStub(ch)
        for _ in range(4):
            try:
                stub.Unary(b"x", timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: value(registry, "discovery_ejections_total", target=target, backend=a.addr) == 1,
                 message="one ejection of the failing backend")
        assert value(registry, "discovery_ejections_total", target=target, backend=b.addr) == 0
        assert [s.ejected for s in ch.backends()] == [True, False]


def test_disable_stops_counting_and_unregisters(start_backends: Start, registry: CollectorRegistry) -> None:
    (server,) = start_backends(1)
    target = static_target([server])
    metrics = dm.enable_prometheus(registry)
    assert dm.enable_prometheus(registry) is metrics  # idempotent
    assert dm.prometheus_enabled() is metrics
    with discovery.insecure_channel(target) as ch:
        EchoStub(ch).Unary(b"x", timeout=5, wait_for_ready=True)
        assert value(registry, "discovery_rpcs_total", target=target, backend=server.addr, method=UNARY,
                     code="OK") == 1
        dm.disable_prometheus()
        assert observe.observers() == ()
        assert registry.get_sample_value("discovery_backends", {"target": target, "state": "READY"}) is None
        EchoStub(ch).Unary(b"x", timeout=5)
        assert server.calls["Unary"] == 2
        # The disabled metrics saw the first RPC only.
        assert sample(metrics, "discovery_rpcs_total", target=target, backend=server.addr, method=UNARY,
                      code="OK") == 1
        other = CollectorRegistry()
        try:
            dm.enable_prometheus(other)
            EchoStub(ch).Unary(b"x", timeout=5)
            # Counting starts over in the new registry; the first one got nothing more.
            assert value(other, "discovery_rpcs_total", target=target, backend=server.addr, method=UNARY,
                         code="OK") == 1
        finally:
            dm.disable_prometheus()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="CollectorRegistry"):
        dm.enable_prometheus("registry")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="buckets"):
        dm.enable_prometheus(CollectorRegistry(), buckets=())
    assert dm.prometheus_enabled() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_config_file_turns_metrics_on_and_serves_them(start_backends: Start, tmp_path: Path) -> None:
    (server,) = start_backends(1)
    port = _free_port()
    cfg = tmp_path / "discovery.toml"
    cfg.write_text(f'[observability]\nprometheus = true\nprometheus_port = {port}\n\n'
                   f'[services.echo]\ntarget = "{static_target([server])}"\n')
    try:
        with discovery.channel_from_config("echo", cfg) as ch:
            assert dm.prometheus_enabled() is not None
            assert dm.prometheus_enabled().registry is REGISTRY  # type: ignore[union-attr]
            EchoStub(ch).Unary(b"x", timeout=5, wait_for_ready=True)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert (f'discovery_rpcs_total{{backend="{server.addr}",code="OK",method="{UNARY}",'
                    f'target="{static_target([server])}"}} 1.0') in text
    finally:
        dm.disable_prometheus()
        observe.stop_metrics_servers()


@pytest.mark.parametrize(("table", "key", "expected"), [
    ("prometheus = 'yes'", "observability.prometheus", "true or false"),
    ("prometheus = true\nprometheus_port = 70000", "observability.prometheus_port", "port number"),
    ("prometheus = false\nprometheus_port = 9464", "observability.prometheus_port", "needs prometheus = true"),
    ("tracing = 1", "observability.tracing", "true or false"),
    ("grafana = true", "observability", "unknown key"),
])
def test_config_file_errors_name_the_key(tmp_path: Path, table: str, key: str, expected: str) -> None:
    cfg = tmp_path / "discovery.toml"
    cfg.write_text(f'[observability]\n{table}\n\n[services.echo]\ntarget = "static:///127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match=expected) as info:
        discovery.channel_from_config("echo", cfg)
    assert info.value.key_path == key
    assert info.value.source == str(cfg)
    assert dm.prometheus_enabled() is None
