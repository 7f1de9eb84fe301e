"""The drop-in channel against real grpc servers on loopback."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import pytest

import discovery
from discovery import Address, ResolverState
from discovery.testing import ManualResolverBuilder, wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub, static_target

C = grpc.ChannelConnectivity




def check_round_robin(stub: EchoStub, servers: list[BackendServer], rounds: int = 10) -> None:
    """Like grpc-go's CheckRoundRobinRPCs: every window of N RPCs hits each backend once."""
    names = [s.name.encode() for s in servers]
    got = [stub.Unary(b"", timeout=10) for _ in range(len(servers) * rounds)]
    for i in range(0, len(got), len(servers)):
        window = got[i : i + len(servers)]
        assert sorted(window) == sorted(names), f"window {i // len(servers)}: {window}"


def test_is_a_real_grpc_channel(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(1)
    with discovery.insecure_channel(static_target(servers)) as ch:
        assert isinstance(ch, grpc.Channel)


def test_round_robin_distribution(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(4)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)  # the first RPC waits while the channel connects
        wait_ready(ch, 4)
        check_round_robin(stub, servers)


def test_pick_first_uses_only_the_first_address(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    sc = {"loadBalancingConfig": [{"pick_first": {}}]}
    with discovery.insecure_channel(static_target(servers), service_config=sc) as ch:
        stub = EchoStub(ch)
        assert {stub.Unary(b"", timeout=10) for _ in range(20)} == {servers[0].name.encode()}
        servers[0].stop()
        # After the first backend goes away pick_first moves to the next one.
        wait_for(lambda: _try(stub) == servers[1].name.encode(), 10, message="failover to the 2nd address")


def _try(stub: EchoStub) -> bytes | None:
    try:
        return stub.Unary(b"", timeout=5)  # type: ignore[no-any-return]
    except grpc.RpcError:
        return None


def test_all_four_rpc_shapes_and_call_styles(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    name = s.name.encode()
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        assert stub.Unary(b"", timeout=10) == name
        resp, call = stub.Unary.with_call(b"", timeout=10, metadata=[("x-test", "1")])
        assert resp == name and call.code() is grpc.StatusCode.OK
        assert stub.Unary.future(b"", timeout=10).result() == name
        assert list(stub.ServerStream(b"3", timeout=10)) == [name] * 3
        assert stub.ClientStream(iter([b"a", b"b"]), timeout=10) == name + b":2"
        resp, call = stub.ClientStream.with_call(iter([b"a"]), timeout=10)
        assert resp == name + b":1"
        assert stub.ClientStream.future(iter([b"a"] * 3), timeout=10).result() == name + b":3"
        assert list(stub.Bidi(iter([b"x", b"y"]), timeout=10)) == [name + b":x", name + b":y"]
        assert stub.Unary(b"", timeout=10, compression=grpc.Compression.Gzip) == name
        wait_for(lambda: all(b.in_flight == 0 for b in ch.backends()), message="in-flight counts return to 0")


def test_intercept_channel_and_metadata(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    seen: list[tuple[str, object]] = []

    class Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
            seen.append((details.method, details.metadata))
            return continuation(details._replace(metadata=[("x-added", "yes")]), request)

    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(grpc.intercept_channel(ch, Recorder()))
        assert stub.Unary(b"", timeout=10, metadata=[("x-mine", "1")]) == s.name.encode()
    assert seen == [("/discovery.testing.Echo/Unary", [("x-mine", "1")])]


def test_deadline_is_honoured_by_the_backend_call(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    s.gate.clear()
    try:
        with discovery.insecure_channel(static_target([s])) as ch:
            stub = EchoStub(ch)
            stub.Unary(b"", timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ServerStream(b"1", timeout=0.3))
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        s.gate.set()


def test_killed_backend_gets_no_rpcs_and_none_fail_after_detection(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 3)
        victim = servers[0]
        victim.stop()
        wait_for(lambda: next(b for b in ch.backends() if b.address == victim.addr).state is not C.READY, 10,
                 message="the killed backend is noticed")
        before = victim.total
        got = [stub.Unary(b"", timeout=10) for _ in range(60)]  # a failure here raises
        assert victim.name.encode() not in got
        assert victim.total == before
        assert collections.Counter(got) == {servers[1].name.encode(): 30, servers[2].name.encode(): 30}


def test_all_backends_down_fails_fast_then_wait_for_ready_succeeds_when_one_starts(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        for s in servers:
            s.stop()
        wait_for(lambda: ch.get_state() is C.TRANSIENT_FAILURE, 10, message="channel in TRANSIENT_FAILURE")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=30)
        assert time.monotonic() - t0 < 5.0  # fail-fast: no waiting on a 30 s deadline
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert ch.target in info.value.details() and "0 of 2 backends ready" in info.value.details()
        # .future() fails fast the same way and never raises at call time.
        assert stub.Unary.future(b"", timeout=30).exception().code() is grpc.StatusCode.UNAVAILABLE

        result: list[bytes] = []
        waiting = threading.Thread(target=lambda: result.append(stub.Unary(b"", timeout=30, wait_for_ready=True)))
        fut = stub.Unary.future(b"", timeout=30, wait_for_ready=True)
        waiting.start()
        assert not fut.done()
        servers[1].start()  # same port as before
        waiting.join(30)
        assert result == [servers[1].name.encode()]
        assert fut.result(30) == servers[1].name.encode()


def test_wait_for_ready_gives_up_at_its_deadline(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    s.stop()
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=0.5, wait_for_ready=True)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_address_changes_through_the_manual_resolver(start_backends, manual: ManualResolverBuilder) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(4)
    a, b, c, d = servers

    def state(*ss: BackendServer) -> ResolverState:
        return ResolverState(tuple(Address("127.0.0.1", s.port) for s in ss))

    with discovery.insecure_channel("manual:///orders") as ch:
        stub = EchoStub(ch)
        manual.resolver.push(state(a, b))
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 2)
        check_round_robin(stub, [a, b])

        # Hold a stream open on each of a and b, then remove a: its stream must finish, not be cancelled.
        a.gate.clear()
        b.gate.clear()
        streams = [stub.ServerStream(b"2", timeout=30) for _ in range(2)]
        wait_for(lambda: a.active == 1 and b.active == 1, message="one stream held on each backend")
        manual.resolver.push(state(b, c, d))
        wait_for(lambda: {x.address for x in ch.backends()} == {b.addr, c.addr, d.addr}, message="new set applied")
        wait_ready(ch, 3)
        check_round_robin(stub, [b, c, d])
        before_a = a.calls["Unary"]
        for _ in range(9):
            stub.Unary(b"", timeout=10)
        assert a.calls["Unary"] == before_a
        a.gate.set()
        b.gate.set()
        for st in streams:
            assert len(list(st)) == 2 and st.code() is grpc.StatusCode.OK


def test_identical_resolver_updates_do_not_reconnect(start_backends, manual: ManualResolverBuilder) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    st = ResolverState(tuple(Address("127.0.0.1", s.port) for s in servers))
    with discovery.insecure_channel("manual:///x") as ch:
        manual.resolver.push(st)
        EchoStub(ch).Unary(b"", timeout=10)
        core = ch._core
        for _ in range(50):
            manual.resolver.push(ResolverState(tuple(Address("127.0.0.1", s.port) for s in servers)))
        done = threading.Event()
        core.loop.submit(done.set)
        assert done.wait(5)
        assert core.manager.created == 2 and core.manager.closed == 0


def test_resolver_errors(start_backends, manual: ManualResolverBuilder) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel("manual:///x") as ch:
        stub = EchoStub(ch)
        manual.resolver.fail("registry unreachable")
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "registry unreachable" in info.value.details()
        manual.resolver.push([Address("127.0.0.1", s.port)])
        wait_for(lambda: ch.backends(), message="first good set applied")
        assert stub.Unary(b"", timeout=10) == s.name.encode()
        manual.resolver.fail("registry unreachable again")
        # The last good set stays in use.
        for _ in range(5):
            assert stub.Unary(b"", timeout=10) == s.name.encode()
        manual.resolver.push(ResolverState((), note="NXDOMAIN for orders.internal"))
        wait_for(lambda: not ch.backends(), message="empty set applied")
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=5)
        assert "no addresses" in info.value.details() and "NXDOMAIN for orders.internal" in info.value.details()


def test_subscribe_reports_aggregate_states_and_shutdown(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    seen: list[grpc.ChannelConnectivity] = []
    cond = threading.Condition()
    threads: list[str] = []

    def cb(state: grpc.ChannelConnectivity) -> None:
        with cond:
            seen.append(state)
            threads.append(threading.current_thread().name)
            cond.notify_all()

    ch = discovery.insecure_channel(static_target(servers))
    ch.subscribe(cb, try_to_connect=True)
    with cond:
        assert cond.wait_for(lambda: C.READY in seen, 10)
    ch.unsubscribe(cb)
    n = len(seen)
    ch.close()
    assert len(seen) == n and seen[0] in (C.IDLE, C.CONNECTING, C.READY)
    ch2 = discovery.insecure_channel(static_target(servers))
    ch2.subscribe(cb)
    with cond:
        assert cond.wait_for(lambda: seen[-1] is C.READY, 10)
    ch2.close()
    assert seen[-1] is C.SHUTDOWN
    # Every callback, SHUTDOWN included, ran on the channel's control thread.
    assert {t.startswith("discovery-control") for t in threads} == {True}


def test_close_with_grace_lets_streams_finish_and_refuses_new_rpcs(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    ch = discovery.insecure_channel(static_target([s]))
    stub = EchoStub(ch)
    stub.Unary(b"", timeout=10)
    s.gate.clear()
    stream = stub.ServerStream(b"2", timeout=30)
    wait_for(lambda: s.active == 1, message="stream held")
    closer = threading.Thread(target=lambda: ch.close(grace=20))
    closer.start()
    wait_for(lambda: ch._core.closed, message="close started")
    with pytest.raises(ValueError, match="closed channel"):
        stub.Unary(b"", timeout=1)
    s.gate.set()
    assert len(list(stream)) == 2 and stream.code() is grpc.StatusCode.OK
    closer.join(20)
    assert not closer.is_alive()


def test_close_without_grace_cancels_in_flight(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    ch = discovery.insecure_channel(static_target([s]))
    stub = EchoStub(ch)
    s.gate.clear()
    try:
        stream = stub.ServerStream(b"2", timeout=30)
        wait_for(lambda: s.active == 1, message="stream held")
        ch.close()
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() is grpc.StatusCode.CANCELLED
    finally:
        s.gate.set()


def test_bare_host_port_uses_grpcs_default_scheme() -> None:
    from discovery import _resolve_target

    for raw in ("localhost:50051", "orders.internal", "[::1]:5"):
        t = _resolve_target(raw)
        assert (t.scheme, t.endpoint) == ("dns", raw)
    assert _resolve_target("static:///a:1").scheme == "static"


def test_bad_arguments_raise_before_anything_starts() -> None:
    before = threading.active_count()
    with pytest.raises(discovery.TargetError):
        discovery.insecure_channel("static:///")
    with pytest.raises(discovery.UnknownPolicyError):
        discovery.insecure_channel("static:///127.0.0.1:1", service_config={"loadBalancingConfig": [{"x": {}}]})
    assert threading.active_count() <= before
