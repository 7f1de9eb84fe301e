"""Health filtering, outlier ejection, panic mode, drain, retries: real servers on loopback."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

import discovery
from discovery import Address, ChannelSettings, ResolverState
from discovery.testing import FakeClock, ManualResolverBuilder, wait_for, wait_ready
from discovery.testing.servers import SERVICE, BackendServer, EchoStub, static_target

C = grpc.ChannelConnectivity
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": SERVICE}}



def snapshot(ch: discovery.Channel, server: BackendServer) -> discovery.BackendSnapshot:
    return next(b for b in ch.backends() if b.address == server.addr)



def spread(stub: EchoStub, n: int) -> collections.Counter[bytes]:
    return collections.Counter(stub.Unary(b"", timeout=10) for _ in range(n))


# -- health checking (gRFC A17, run by grpcio's core) --------------------------------


def test_not_serving_is_excluded_and_serving_restores(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    with discovery.insecure_channel(static_target(servers), service_config=HEALTH) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 3)
        sick = servers[0]
        sick.set_health(NOT_SERVING)
        wait_for(lambda: not snapshot(ch, sick).healthy, 10, message="NOT_SERVING noticed")
        before = sick.total
        got = spread(stub, 40)  # none may fail
        assert sick.name.encode() not in got and sick.total == before
        sick.set_health(SERVING)
        wait_for(lambda: snapshot(ch, sick).healthy and snapshot(ch, sick).state is C.READY, 10,
                 message="SERVING restores the backend")
        assert spread(stub, 30) == {s.name.encode(): 10 for s in servers}


def test_backend_without_health_service_counts_as_healthy(start_backends) -> None:  # type: ignore[no-untyped-def]
    plain = BackendServer(with_health=False).start()
    try:
        (other,) = start_backends(1)
        with discovery.insecure_channel(static_target([plain, other]), service_config=HEALTH) as ch:
            stub = EchoStub(ch)
            stub.Unary(b"", timeout=10)
            wait_ready(ch, 2)
            assert spread(stub, 20) == {plain.name.encode(): 10, other.name.encode(): 10}
            assert all(b.healthy for b in ch.backends())
    finally:
        plain.stop()


def test_health_watch_errors_mark_the_backend_unhealthy(start_backends) -> None:  # type: ignore[no-untyped-def]
    good, broken = start_backends(2)
    broken.health_fails_with = grpc.StatusCode.INTERNAL
    with discovery.insecure_channel(static_target([good, broken]), service_config=HEALTH) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_for(lambda: not snapshot(ch, broken).healthy, 10, message="broken health endpoint noticed")
        assert spread(stub, 20) == {good.name.encode(): 20}
        broken.health_fails_with = None  # grpcio retries the Watch with backoff and recovers
        wait_for(lambda: snapshot(ch, broken).state is C.READY, 15, message="recovers after the Watch works")


def test_all_unhealthy_fails_fast_naming_the_reason(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    with discovery.insecure_channel(static_target(servers), service_config=HEALTH) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        for s in servers:
            s.set_health(NOT_SERVING)
        wait_for(lambda: ch.get_state() is C.TRANSIENT_FAILURE, 10, message="all unhealthy")
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "0 of 2 backends ready" in info.value.details()


# -- outlier detection ------------------------------------------------------------------


def od(**extra: object) -> dict[str, object]:
    cfg: dict[str, object] = {"interval": "0.05s", "baseEjectionTime": "30s", "maxEjectionPercent": 20,
                              "childPolicy": [{"round_robin": {"panicThreshold": 0}}]}
    cfg.update(extra)
    return {"loadBalancingConfig": [{"outlier_detection": cfg}]}


def fire(stub: EchoStub, n: int) -> tuple[collections.Counter[bytes], int]:
    ok: collections.Counter[bytes] = collections.Counter()
    failed = 0
    for _ in range(n):
        try:
            ok[stub.Unary(b"", timeout=10)] += 1
        except grpc.RpcError:
            failed += 1
    return ok, failed


def test_consecutive_errors_eject_and_the_backend_returns_after_the_ejection_time(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(5)
    bad = servers[2]
    bad.fail_with = grpc.StatusCode.INTERNAL
    clock = FakeClock()
    settings = ChannelSettings(clock=clock)
    with discovery.insecure_channel(static_target(servers), service_config=od(), settings=settings) as ch:
        stub = EchoStub(ch)
        fire(stub, 1)  # may land on a failing backend
        wait_ready(ch, 5)
        fire(stub, 40)  # the bad backend sees 8 of these and fails 5 in a row by then
        wait_for(lambda: snapshot(ch, bad).ejected, 5, message="bad backend ejected")
        before = bad.total
        ok, failed = fire(stub, 40)
        assert failed == 0 and bad.total == before
        assert ok == {s.name.encode(): 10 for s in servers if s is not bad}
        bad.fail_with = None
        clock.advance(29.0)
        assert snapshot(ch, bad).ejected
        clock.advance(1.5)
        wait_for(lambda: not snapshot(ch, bad).ejected, 5, message="un-ejected after baseEjectionTime")
        ok, failed = fire(stub, 50)
        assert failed == 0 and ok[bad.name.encode()] == 10


def test_repeated_ejections_last_longer(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(5)
    bad = servers[0]
    bad.fail_with = grpc.StatusCode.UNKNOWN
    clock = FakeClock()
    settings = ChannelSettings(clock=clock)
    with discovery.insecure_channel(static_target(servers), service_config=od(), settings=settings) as ch:
        stub = EchoStub(ch)
        fire(stub, 1)  # may land on a failing backend
        wait_ready(ch, 5)
        fire(stub, 40)
        wait_for(lambda: snapshot(ch, bad).ejected, 5, message="first ejection")
        clock.advance(31)
        wait_for(lambda: not snapshot(ch, bad).ejected, 5, message="first return")
        fire(stub, 40)  # still failing: ejected again, now for 2 x 30 s
        wait_for(lambda: snapshot(ch, bad).ejected, 5, message="second ejection")
        balancer = ch._core.balancer
        seen = balancer.ticks
        clock.advance(31)
        # Policy timers run on the injected clock: this advance makes one interval due.
        wait_for(lambda: balancer.ticks >= seen + 1, 5, message="an interval evaluated at +31 s")
        assert snapshot(ch, bad).ejected
        clock.advance(30)
        wait_for(lambda: not snapshot(ch, bad).ejected, 5, message="second return after 60 s")


def test_max_ejection_percent_is_respected_but_one_can_always_go(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(5)
    for s in servers[:3]:
        s.fail_with = grpc.StatusCode.INTERNAL
    with discovery.insecure_channel(static_target(servers), service_config=od(maxEjectionPercent=10)) as ch:
        stub = EchoStub(ch)
        fire(stub, 1)  # may land on a failing backend
        wait_ready(ch, 5)
        fire(stub, 100)
        wait_for(lambda: sum(b.ejected for b in ch.backends()) == 1, 5, message="one ejection")
        fire(stub, 100)
        assert sum(b.ejected for b in ch.backends()) == 1  # 10 % of 5 rounds down, yet one is allowed


@pytest.mark.parametrize(
    ("n", "code", "algorithm"),
    [(5, grpc.StatusCode.DEADLINE_EXCEEDED,
      {"maxEjectionPercent": 20,
       "failurePercentageEjection": {"threshold": 50, "minimumHosts": 5, "requestVolume": 10}}),
     (6, grpc.StatusCode.UNAVAILABLE,
      {"maxEjectionPercent": 50,
       "successRateEjection": {"stdevFactor": 1000, "minimumHosts": 5, "requestVolume": 10}})],
    ids=["failure-percentage", "success-rate"],
)
def test_interval_ejection_algorithms(start_backends, n: int, code: grpc.StatusCode,  # type: ignore[no-untyped-def]
                                      algorithm: dict[str, object]) -> None:
    servers = start_backends(n)
    bad = servers[0]
    cfg = od(consecutiveErrors=0, interval="0.3s", **algorithm)
    with discovery.insecure_channel(static_target(servers), service_config=cfg) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, n)
        bad.fail_with = code

        def ejected() -> bool:
            fire(stub, 5 * n)
            return snapshot(ch, bad).ejected

        wait_for(ejected, 10, message="ejection by the interval algorithm")
        assert [b.address for b in ch.backends() if b.ejected] == [bad.addr]


def test_ok_and_client_side_codes_do_not_count_as_failures(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(5)
    servers[0].fail_with = grpc.StatusCode.NOT_FOUND  # the request's fault, not the backend's
    with discovery.insecure_channel(static_target(servers), service_config=od()) as ch:
        stub = EchoStub(ch)
        fire(stub, 1)
        wait_ready(ch, 5)
        _, failed = fire(stub, 50)
        assert failed == 10
        balancer = ch._core.balancer
        seen = balancer.ticks
        wait_for(lambda: balancer.ticks >= seen + 2, 5, message="two intervals evaluated")
        assert not any(b.ejected for b in ch.backends())


# -- panic mode -----------------------------------------------------------------------


def test_panic_spread_sends_traffic_to_ejected_backends(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(4)
    cfg = {"loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.05s", "maxEjectionPercent": 100, "childPolicy": [{"round_robin": {"panicMode": "spread"}}]}}]}
    with discovery.insecure_channel(static_target(servers), service_config=cfg) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 4)
        for s in servers[:3]:
            s.fail_with = grpc.StatusCode.INTERNAL
        fire(stub, 60)
        wait_for(lambda: sum(b.ejected for b in ch.backends()) == 3, 5, message="three ejected")
        ok, failed = fire(stub, 40)
        # 1 of 4 usable is below 50 %: traffic spreads over all four again.
        assert failed == 30 and ok == {servers[3].name.encode(): 10}


def test_panic_fail_mode_fails_fast_with_the_reason(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(4)
    cfg = {"loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.05s", "maxEjectionPercent": 100, "childPolicy": [{"round_robin": {"panicMode": "fail"}}]}}]}
    with discovery.insecure_channel(static_target(servers), service_config=cfg) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 4)
        for s in servers[:3]:
            s.fail_with = grpc.StatusCode.INTERNAL
        fire(stub, 60)
        wait_for(lambda: sum(b.ejected for b in ch.backends()) == 3, 5, message="three ejected")
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "panic: 1 of 4 backends usable, below the 50% threshold" in info.value.details()


# -- killed backends, drain, churn ---------------------------------------------------------


def test_backend_killed_under_steady_load(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    victim = servers[0]
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 3)
        stop = threading.Event()
        detected = threading.Event()
        results: list[tuple[bool, bool]] = []  # (detected when issued, failed)
        lock = threading.Lock()

        def load() -> None:
            while not stop.is_set():
                after = detected.is_set()
                try:
                    stub.Unary(b"", timeout=10)
                    ok = True
                except grpc.RpcError:
                    ok = False
                with lock:
                    results.append((after, not ok))

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        wait_for(lambda: len(results) > 200, 10, message="steady load")
        victim.stop()
        wait_for(lambda: snapshot(ch, victim).state is not C.READY, 10, message="kill detected")
        detected.set()
        n = len(results)
        wait_for(lambda: len(results) > n + 300, 20, message="load after detection")
        stop.set()
        for w in workers:
            w.join(10)
        before = [failed for after, failed in results if not after]
        after = [failed for after, failed in results if after]
        assert sum(after) == 0
        assert sum(before) <= len(workers)  # at most the RPCs in flight at the kill


def test_all_down_then_restarted(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        for s in servers:
            s.stop()
        wait_for(lambda: ch.get_state() is C.TRANSIENT_FAILURE, 10, message="all down")
        with pytest.raises(grpc.RpcError):
            stub.Unary(b"", timeout=5)
        waiting = stub.Unary.future(b"", timeout=30, wait_for_ready=True)
        for s in servers:
            s.start()
        assert waiting.result(30) in {s.name.encode() for s in servers}
        wait_ready(ch, 2)
        assert spread(stub, 20) == {s.name.encode(): 10 for s in servers}


def test_removed_backend_drains_held_streams_without_cancellation(start_backends,
                                                                 manual: ManualResolverBuilder) -> None:  # type: ignore[no-untyped-def]
    a, b = start_backends(2)
    with discovery.insecure_channel("manual:///x") as ch:
        stub = EchoStub(ch)
        manual.resolver.push([Address("127.0.0.1", a.port)])
        stub.Unary(b"", timeout=10)
        a.gate.clear()
        held = [stub.ServerStream(b"3", timeout=30) for _ in range(3)]
        bidi_requests = threading.Event()

        def requests() -> Iterator[bytes]:
            yield b"first"
            bidi_requests.wait(30)
            yield b"second"

        bidi = stub.Bidi(requests(), timeout=30)
        assert next(bidi) == a.name.encode() + b":first"
        wait_for(lambda: a.active == 3, message="streams held")
        manual.resolver.push([Address("127.0.0.1", b.port)])
        wait_for(lambda: [x.address for x in ch.backends()] == [b.addr], message="a removed")
        assert stub.Unary(b"", timeout=10) == b.name.encode()
        core = ch._core
        assert len(core.manager.draining) == 1 and core.manager.closed == 0
        a.gate.set()
        bidi_requests.set()
        for st in held:
            assert len(list(st)) == 3 and st.code() is grpc.StatusCode.OK
        assert list(bidi) == [a.name.encode() + b":second"] and bidi.code() is grpc.StatusCode.OK
        wait_for(lambda: core.manager.closed == 1 and not core.manager.draining, message="a closed after draining")


def _client_threads() -> int:
    # The in-process test servers grow their own worker pools; only the
    # client's threads matter here.
    return sum(1 for t in threading.enumerate() if "ThreadPoolExecutor" not in t.name and "_serve" not in t.name)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_flapping_addresses_leak_nothing(start_backends, manual: ManualResolverBuilder) -> None:  # type: ignore[no-untyped-def]
    a, b, c = start_backends(3)
    sets = [ResolverState((Address("127.0.0.1", a.port), Address("127.0.0.1", b.port))),
            ResolverState((Address("127.0.0.1", a.port), Address("127.0.0.1", c.port)))]
    with discovery.insecure_channel("manual:///x") as ch:
        stub = EchoStub(ch)
        manual.resolver.push(sets[0])
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 2)
        threads, fds = _client_threads(), _fds()
        for i in range(1000):
            manual.resolver.push(sets[(i + 1) % 2])
            if i % 100 == 0:
                stub.Unary(b"", timeout=10)
        core = ch._core
        applied = threading.Event()
        core.loop.submit(applied.set)  # runs after every state pushed above
        assert applied.wait(30)
        assert [x.address for x in ch.backends()] == [a.addr, b.addr]
        wait_for(lambda: not core.manager.draining, message="nothing left draining")
        assert core.manager.created - core.manager.closed == 2
        assert core.manager.created == 1002
        wait_ready(ch, 2)
        assert spread(stub, 10) == {a.name.encode(): 5, b.name.encode(): 5}
        wait_for(lambda: _client_threads() <= threads, 10,
                 message=f"threads back to {threads}: {[t.name for t in threading.enumerate()]}")
        wait_for(lambda: _fds() <= fds + 2, 10, message=f"file descriptors back to about {fds}")


# -- retries -------------------------------------------------------------------------------


def retry_config(**throttle: float) -> dict[str, object]:
    cfg: dict[str, object] = {
        "loadBalancingConfig": [{"round_robin": {"panicThreshold": 0}}],
        "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
            "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"]}}]}
    if throttle:
        cfg["retryThrottling"] = throttle
    return cfg


def test_retries_land_on_backends_not_tried_yet(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    for s in servers[:2]:
        s.fail_with = grpc.StatusCode.UNAVAILABLE
    with discovery.insecure_channel(static_target(servers), service_config=retry_config()) as ch:
        stub = EchoStub(ch)
        ready_stub = stub.Unary(b"", timeout=10)
        assert ready_stub == servers[2].name.encode()
        wait_ready(ch, 3)
        for _ in range(20):
            before = [s.total for s in servers]
            assert stub.Unary(b"", timeout=10) == servers[2].name.encode()
            tries = [s.total - n for s, n in zip(servers, before, strict=True)]
            assert max(tries) == 1, f"a backend was tried twice for one RPC: {tries}"
        # with_call and future retry the same way; a server stream retries before its first message.
        resp, call = stub.Unary.with_call(b"", timeout=10)
        assert resp == servers[2].name.encode() and call.code() is grpc.StatusCode.OK
        assert stub.Unary.future(b"", timeout=10).result() == servers[2].name.encode()
        assert list(stub.ServerStream(b"2", timeout=10)) == [servers[2].name.encode()] * 2


def test_non_retryable_codes_are_not_retried(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    for s in servers:
        s.fail_with = grpc.StatusCode.INTERNAL
    with discovery.insecure_channel(static_target(servers), service_config=retry_config()) as ch:
        stub = EchoStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=10)
        assert info.value.code() is grpc.StatusCode.INTERNAL
        assert sum(s.total for s in servers) == 1


def test_retry_throttling_stops_retry_storms(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    for s in servers:
        s.fail_with = grpc.StatusCode.UNAVAILABLE
    cfg = retry_config(maxTokens=10, tokenRatio=0.1)
    with discovery.insecure_channel(static_target(servers), service_config=cfg) as ch:
        stub = EchoStub(ch)
        for _ in range(10):
            with pytest.raises(grpc.RpcError):
                stub.Unary(b"", timeout=10)
        # Tokens 10 -> 9 -> 8 -> 7 (three attempts), 6 -> 5 (two), then no retries: 3 + 2 + 8 x 1.
        assert sum(s.total for s in servers) == 13
        assert ch._core.throttle is not None and ch._core.throttle.tokens == 0


def test_transparent_repick_when_the_backend_channel_could_not_send(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 2)
        dead = servers[0]
        dead.stop()
        # Straight after the kill the picker may still offer the dead backend;
        # no RPC may fail because of it.
        got = spread(stub, 10)
        assert got == {servers[1].name.encode(): 10}


# -- connection settings ---------------------------------------------------------------------


def test_channel_options_reach_every_backend(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    opts = [("grpc.max_receive_message_length", 1024), ("grpc.keepalive_time_ms", 30000)]
    with discovery.insecure_channel(static_target(servers), opts) as ch:
        stub = EchoStub(ch)
        assert stub.Unary(b"", timeout=10)
        wait_ready(ch, 2)
        for _ in range(2):  # one per backend
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Bidi(iter([b"x" * 4096]), timeout=10))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
