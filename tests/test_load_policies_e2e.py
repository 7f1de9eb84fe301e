"""The load-aware policies over real backends on loopback, on blocking and asyncio channels.

Distributions are checked with a chi-square test over the replies (which
name the backend that served them), never with timing alone.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

import discovery
from discovery import aio, orca
from discovery.balancers.circuit_breaker import CircuitBreakerBuilder
from discovery.balancers.least_request import LeastRequestBuilder
from discovery.balancers.peak_ewma import PeakEwmaBuilder
from discovery.balancers.weighted_round_robin import WeightedRoundRobinBuilder
from discovery.testing import check_distribution, wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub, static_target

C = grpc.ChannelConnectivity
pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    builders = (LeastRequestBuilder(), PeakEwmaBuilder(), CircuitBreakerBuilder(), WeightedRoundRobinBuilder())
    for b in builders:
        discovery.register_balancer(b, replace=True)
    yield
    for b in builders:
        discovery.unregister_balancer(b.name)


def lb(name: str, **cfg: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": [{name: cfg}]}


def tally(replies: list[bytes], servers: list[BackendServer]) -> list[int]:
    c = collections.Counter(replies)
    return [c[s.name.encode()] for s in servers]


def run_sync(target: str, service_config: dict[str, Any], n: int, ready: int,
             resolver_config: dict[str, Any] | None = None) -> list[bytes]:
    with discovery.insecure_channel(target, service_config=service_config, resolver_config=resolver_config) as ch:
        wait_ready(ch, ready)
        stub = EchoStub(ch)
        return [stub.Unary(b"", timeout=10) for _ in range(n)]


def run_aio(target: str, service_config: dict[str, Any], n: int, ready: int,
            resolver_config: dict[str, Any] | None = None) -> list[bytes]:
    async def main() -> list[bytes]:
        async with aio.insecure_channel(target, service_config=service_config,
                                        resolver_config=resolver_config) as ch:
            stub = EchoStub(ch)
            await stub.Unary(b"", timeout=10, wait_for_ready=True)
            await asyncio.to_thread(wait_ready, ch, ready)
            out = []
            for _ in range(n // 10):
                out.extend(await asyncio.gather(*(stub.Unary(b"", timeout=10) for _ in range(10))))
            return out

    return asyncio.run(main())


RUNNERS: dict[str, Callable[..., list[bytes]]] = {"sync": run_sync, "aio": run_aio}


@pytest.mark.parametrize("shape", ["sync", "aio"])
def test_least_request_gives_even_backends_even_shares(start_backends, shape: str) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    replies = RUNNERS[shape](static_target(servers), lb("least_request_experimental", choiceCount=3), 600, 3)
    check_distribution(tally(replies, servers), [1, 1, 1])


@pytest.mark.parametrize("shape", ["sync", "aio"])
def test_peak_ewma_serves_every_shape_and_releases_its_counts(start_backends, shape: str) -> None:  # type: ignore[no-untyped-def]
    # Its shares follow measured latency, so no distribution is asserted here
    # (the fake-clock tests do that); the books must balance on every shape.
    servers = start_backends(2)
    sc = lb("peak_ewma")
    if shape == "sync":
        with discovery.insecure_channel(static_target(servers), service_config=sc) as ch:
            wait_ready(ch, 2)
            stub = EchoStub(ch)
            stub.Unary(b"", timeout=10)
            stub.Unary.with_call(b"", timeout=10)
            stub.Unary.future(b"", timeout=10).result(10)
            assert len(list(stub.ServerStream(b"2", timeout=10))) == 2
            assert stub.ClientStream(iter([b"a", b"b"]), timeout=10).endswith(b":2")
            assert len(list(stub.Bidi(iter([b"a"]), timeout=10))) == 1
            states = ch._core.balancer.states
            wait_for(lambda: all(st.n == 0 for st in states.values()), 5, message="in-flight counts back to 0")
            assert sum(s.total for s in servers) == 6
    else:
        async def main() -> None:
            async with aio.insecure_channel(static_target(servers), service_config=sc) as ch:
                stub = EchoStub(ch)
                await stub.Unary(b"", timeout=10, wait_for_ready=True)
                assert len([m async for m in stub.ServerStream(b"2", timeout=10)]) == 2
                await asyncio.gather(*(stub.Unary(b"", timeout=10) for _ in range(20)))
                states = ch._core.balancer.states
                await asyncio.to_thread(wait_for, lambda: all(st.n == 0 for st in states.values()), 5)

        asyncio.run(main())


@pytest.mark.parametrize("shape", ["sync", "aio"])
def test_weighted_round_robin_follows_registry_weights(start_backends, shape: str) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    replies = RUNNERS[shape](static_target(servers), lb("weighted_round_robin_experimental"), 600, 3,
                             resolver_config={"weights": [1, 2, 3]})
    check_distribution(tally(replies, servers), [1, 2, 3])


@pytest.mark.parametrize("shape", ["sync", "aio"])
def test_weighted_round_robin_follows_orca_reports(shape: str) -> None:
    # Three Python servers report through discovery.orca: same qps, utilization
    # 0.8 / 0.4 / 0.2, so weights 1 : 2 : 4, whatever the registry says.
    metrics = [orca.ServerMetrics() for _ in range(3)]
    for m, util in zip(metrics, (0.8, 0.4, 0.2), strict=True):
        m.set_qps(100)
        m.set_application_utilization(util)
    servers = [BackendServer(orca=m, orca_min_interval=0.05).start() for m in metrics]
    try:
        cfg = lb("weighted_round_robin", enableOobLoadReport=True, oobReportingPeriod="0.05s",
                 blackoutPeriod="0.1s", weightUpdatePeriod="0.1s")
        target = static_target(servers)

        def weighted(ch: Any) -> bool:
            wrr = ch._core.balancer
            return sorted(round(w) for w in wrr.weights().values()) == [125, 250, 500]

        if shape == "sync":
            with discovery.insecure_channel(target, service_config=cfg) as ch:
                wait_ready(ch, 3)
                wait_for(lambda: weighted(ch), 10, message="ORCA weights")
                stub = EchoStub(ch)
                # One more update period so the picker uses them.
                wait_for(lambda: type(ch._core.picker).__name__ == "EdfPicker", 10)
                replies = [stub.Unary(b"", timeout=10) for _ in range(700)]
        else:
            async def main() -> list[bytes]:
                async with aio.insecure_channel(target, service_config=cfg) as ch:
                    stub = EchoStub(ch)
                    await stub.Unary(b"", timeout=10, wait_for_ready=True)
                    await asyncio.to_thread(wait_ready, ch, 3)
                    await asyncio.to_thread(wait_for, lambda: weighted(ch), 10)
                    await asyncio.to_thread(wait_for, lambda: type(ch._core.picker).__name__ == "EdfPicker", 10)
                    return [await stub.Unary(b"", timeout=10) for _ in range(700)]

            replies = asyncio.run(main())
        check_distribution(tally(replies, servers), [1, 2, 4])
    finally:
        for s in servers:
            s.stop()


def test_orca_service_streams_reports_to_any_grpc_client() -> None:
    m = orca.ServerMetrics()
    m.set_cpu_utilization(0.5)
    m.set_qps(42)
    m.set_named_metric("queue", 7)
    with BackendServer(orca=m, orca_min_interval=0.05) as s, grpc.insecure_channel(s.addr) as ch:
        stream = ch.unary_stream(orca.OOB_METHOD)(orca.report_request(0.05), timeout=10)
        first = orca.parse_report(next(stream))
        m.set_qps(43)
        later = [orca.parse_report(next(stream)) for _ in range(3)]
        stream.cancel()
    assert (first.cpu_utilization, first.rps_fractional, dict(first.named_metrics)) == (0.5, 42, {"queue": 7})
    assert later[-1].rps_fractional == 43


def test_orca_interceptor_counts_calls_and_keeps_the_handlers_trailers() -> None:
    m = orca.ServerMetrics(window=0.01)
    with BackendServer(orca=m) as s, grpc.insecure_channel(s.addr) as ch:
        stub = EchoStub(ch)
        for _ in range(5):
            stub.Unary(b"", timeout=10)
        s.fail_with = grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError):
            stub.Unary(b"", timeout=10)
    with m._lock:
        assert (m._calls, m._errors) == (6, 1)


def test_orca_trailer_is_set_merged_with_the_handlers_own() -> None:
    seen: list[Any] = []

    class Ctx:
        def set_trailing_metadata(self, md: Any) -> None:
            seen.append(tuple(md))

    from discovery.orca import _TrailerContext

    ctx = _TrailerContext(Ctx(), (orca.TRAILER_KEY, b"\x01"))  # type: ignore[arg-type]
    ctx.set_trailing_metadata((("served-by", "b1"),))
    assert seen == [((orca.TRAILER_KEY, b"\x01"),), (("served-by", "b1"), (orca.TRAILER_KEY, b"\x01"))]


@pytest.mark.parametrize("shape", ["sync", "aio"])
def test_least_request_and_peak_ewma_avoid_a_slow_backend(start_backends, shape: str) -> None:  # type: ignore[no-untyped-def]
    fast = start_backends(2)
    slow = BackendServer(delay=0.2).start()
    try:
        servers = [*fast, slow]
        # 8 concurrent callers; round robin would give the slow backend a third.
        # least_request: the slow backend holds its RPCs, so it has more in
        # flight and wins a draw of two only when both draws are it (1/9),
        # or on a tie. peak_ewma: its latency estimate is 0.2 s against ~1 ms.
        for policy, most in (("least_request", 0.22), ("peak_ewma", 0.1)):
            replies = _concurrent(shape, static_target(servers), lb(policy), callers=8, each=25)
            got = tally(replies, servers)
            assert got[2] < most * sum(got), (policy, got)
    finally:
        slow.stop()


def _concurrent(shape: str, target: str, sc: dict[str, Any], callers: int, each: int) -> list[bytes]:
    if shape == "sync":
        out: list[bytes] = []
        lock = threading.Lock()
        with discovery.insecure_channel(target, service_config=sc) as ch:
            wait_ready(ch, 3)
            stub = EchoStub(ch)

            def run() -> None:
                mine = [stub.Unary(b"", timeout=10) for _ in range(each)]
                with lock:
                    out.extend(mine)

            threads = [threading.Thread(target=run) for _ in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return out

    async def main() -> list[bytes]:
        async with aio.insecure_channel(target, service_config=sc) as ch:
            stub = EchoStub(ch)
            await stub.Unary(b"", timeout=10, wait_for_ready=True)
            await asyncio.to_thread(wait_ready, ch, 3)

            async def run() -> list[bytes]:
                return [await stub.Unary(b"", timeout=10) for _ in range(each)]

            parts = await asyncio.gather(*(run() for _ in range(callers)))
            return [r for p in parts for r in p]

    return asyncio.run(main())


@pytest.mark.parametrize("shape", ["sync", "aio"])
def test_circuit_breaker_fails_fast_with_the_limit_and_never_ejects(start_backends, shape: str) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    s.unary_gate.clear()  # hold every RPC on the server
    sc = {"loadBalancingConfig": [{"outlier_detection": {"consecutiveErrors": 1, "interval": "0.05s",
                                                         "childPolicy": [{"circuit_breaker": {"maxRequests": 2}}]}}]}
    try:
        if shape == "sync":
            with discovery.insecure_channel(static_target([s]), service_config=sc) as ch:
                wait_ready(ch, 1)
                stub = EchoStub(ch)
                held = [stub.Unary.future(b"", timeout=10) for _ in range(2)]
                wait_for(lambda: s.active == 2, 10)
                for _ in range(3):
                    with pytest.raises(grpc.RpcError) as ei:
                        stub.Unary(b"", timeout=10, wait_for_ready=True)
                    assert ei.value.code() is grpc.StatusCode.UNAVAILABLE
                    assert "circuit breaker" in ei.value.details() and "maxRequests limit is 2" in ei.value.details()
                s.unary_gate.set()
                assert [f.result(10) for f in held] == [s.name.encode()] * 2
                assert stub.Unary(b"", timeout=10) == s.name.encode()
                assert not any(b.ejected for b in ch.backends())
                assert s.calls["Unary"] == 3  # the dropped RPCs never reached the server
        else:
            async def main() -> None:
                async with aio.insecure_channel(static_target([s]), service_config=sc) as ch:
                    stub = EchoStub(ch)
                    await asyncio.to_thread(wait_ready, ch, 1) if ch.backends() else None
                    held = [asyncio.ensure_future(stub.Unary(b"", timeout=10, wait_for_ready=True)) for _ in range(2)]
                    await asyncio.to_thread(wait_for, lambda: s.active == 2, 10)
                    for _ in range(3):
                        with pytest.raises(grpc.aio.AioRpcError) as ei:
                            await stub.Unary(b"", timeout=10, wait_for_ready=True)
                        assert ei.value.code() is grpc.StatusCode.UNAVAILABLE
                        assert "circuit breaker" in (ei.value.details() or "")
                    s.unary_gate.set()
                    assert await asyncio.gather(*held) == [s.name.encode()] * 2
                    assert not any(b.ejected for b in ch.backends())

            asyncio.run(main())
    finally:
        s.unary_gate.set()


@pytest.mark.parametrize("shape", ["sync", "aio"])
@pytest.mark.parametrize("policy", ["round_robin", "weighted_round_robin", "least_request"])
def test_slow_start_ramps_a_backend_added_later(start_backends, manual, shape: str, policy: str) -> None:  # type: ignore[no-untyped-def]
    from discovery import Address, ChannelSettings, ResolverState
    from discovery.testing import FakeClock

    servers = start_backends(3)
    clock = FakeClock()
    settings = ChannelSettings(clock=clock)
    sc = lb(policy, slowStart={"window": "20s", "aggression": 1.0, "minWeightPercent": 10})

    def state(n: int) -> ResolverState:
        return ResolverState(tuple(Address("127.0.0.1", s.port) for s in servers[:n]))

    def picker_ramped(ch: Any) -> bool:
        # At t = 10 s of 20 the new backend weighs 0.5.
        ramp = ch._core.balancer.ramp
        return ramp is not None and ramp.factor(servers[2].addr) == pytest.approx(0.5)

    async def aio_main() -> list[bytes]:
        async with aio.insecure_channel("manual:///x", service_config=sc, settings=settings) as ch:
            manual.resolver.push(state(2))
            stub = EchoStub(ch)
            await stub.Unary(b"", timeout=10, wait_for_ready=True)
            await asyncio.to_thread(wait_ready, ch, 2)
            manual.resolver.push(state(3))
            await asyncio.to_thread(wait_ready, ch, 3)
            await asyncio.to_thread(wait_for, lambda: len(ch._core.balancer.ramp._since) == 1, 10)
            old = ch._core.picker
            clock.advance(10.0)
            await asyncio.to_thread(wait_for, lambda: picker_ramped(ch) and ch._core.picker is not old, 10)
            return [await stub.Unary(b"", timeout=10) for _ in range(500)]

    if shape == "sync":
        with discovery.insecure_channel("manual:///x", service_config=sc, settings=settings) as ch:
            manual.resolver.push(state(2))
            wait_ready(ch, 2)
            stub = EchoStub(ch)
            stub.Unary(b"", timeout=10)
            manual.resolver.push(state(3))
            wait_ready(ch, 3)
            wait_for(lambda: len(ch._core.balancer.ramp._since) == 1, 10, message="the new backend ramps")
            old = ch._core.picker
            clock.advance(10.0)
            # The ramp timer (on the fake clock) rebuilds the picker with the new weight.
            wait_for(lambda: picker_ramped(ch) and ch._core.picker is not old, 10, message="a ramped picker")
            replies = [stub.Unary(b"", timeout=10) for _ in range(500)]
    else:
        replies = asyncio.run(aio_main())
    check_distribution(tally(replies, servers), [1, 1, 0.5])
