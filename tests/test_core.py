"""The channel core: a failing policy or an unusable address set never leaves RPCs hanging."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import pytest

import discovery
from discovery import Address, ResolverState
from discovery.balancer import Balancer, BalancerBuilder, BalancerHelper, BalancerState, SubConn, build_child
from discovery.testing import ManualResolverBuilder, wait_for, wait_ready
from discovery.testing.servers import EchoStub, static_target

C = grpc.ChannelConnectivity


class _Exploding(Balancer):
    def update_state(self, state: BalancerState) -> None:
        raise RuntimeError("policy bug")

    def subconn_state(self, subconn: SubConn) -> None:
        raise RuntimeError("policy bug")


class _ExplodingBuilder(BalancerBuilder):
    name: ClassVar[str] = "test_exploding"

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return _Exploding()


@pytest.fixture
def exploding() -> Iterator[str]:
    discovery.register_balancer(_ExplodingBuilder())
    yield _ExplodingBuilder.name
    discovery.unregister_balancer(_ExplodingBuilder.name)


def test_a_policy_that_raises_fails_rpcs_fast_instead_of_hanging(start_backends, exploding) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(1)
    sc = {"loadBalancingConfig": [{exploding: {}}]}
    with discovery.insecure_channel(static_target(servers), service_config=sc) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            EchoStub(ch).Unary(b"", timeout=30)
        assert time.monotonic() - t0 < 5  # not the 30 s deadline
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "internal error in the channel's control loop" in info.value.details()
        assert "policy bug" in info.value.details()
        # The control thread is still alive: it answers later work.
        assert ch._core.loop._thread.is_alive()


def test_an_address_set_the_manager_cannot_apply_is_a_resolver_error_and_applies_nothing(
        start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(1)
    builder = ManualResolverBuilder("manualcore")
    discovery.register_resolver(builder, scheme="manualcore")
    try:
        with discovery.insecure_channel("manualcore:///x") as ch:
            resolver = builder.resolver
            resolver.push(ResolverState((Address(servers[0].host, servers[0].port),)))
            assert EchoStub(ch).Unary(b"", timeout=10) == servers[0].name.encode()
            real = ch._core.manager._make_backend

            def refuse(a: Address) -> Any:
                if a.port == 1:
                    raise UnicodeEncodeError("idna", "x", 0, 1, "label invalid")
                return real(a)

            ch._core.manager._make_backend = refuse
            resolver.push(ResolverState((Address(servers[0].host, servers[0].port), Address("127.0.0.1", 1))))
            wait_for(lambda: "cannot use the resolved addresses" in ch._core.resolver_error, 5,
                     message="resolver error recorded")
            # The last good set stays, whole, and keeps serving.
            assert [b.address for b in ch.backends()] == [servers[0].addr]
            assert EchoStub(ch).Unary(b"", timeout=10) == servers[0].name.encode()
    finally:
        discovery.unregister_resolver("manualcore")


@pytest.mark.parametrize("asyncio_channel", [False, True], ids=["sync", "asyncio"])
def test_fail_fast_names_the_connection_error_though_no_rpc_failed_before(
        start_backends, asyncio_channel: bool) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from discovery import aio

    servers = start_backends(2)
    target = static_target(servers)
    for s in servers:
        s.stop()

    if not asyncio_channel:
        with discovery.insecure_channel(target) as ch:
            wait_for(lambda: ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE, 10,
                     message="channel in TRANSIENT_FAILURE")
            wait_for(lambda: all(b.state is grpc.ChannelConnectivity.TRANSIENT_FAILURE for b in ch.backends()), 10)
            with pytest.raises(grpc.RpcError) as info:
                EchoStub(ch).Unary(b"", timeout=10)
        details = info.value.details()
    else:
        async def run() -> str:
            async with aio.insecure_channel(target) as ch:
                ch.get_state(try_to_connect=True)
                await asyncio.to_thread(wait_for, lambda: ch._core.state is grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                                        10)
                await asyncio.to_thread(wait_for, lambda: all(b.last_error for b in ch._core.manager.backends), 10)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await EchoStub(ch).Unary(b"", timeout=10)  # type: ignore[arg-type]
                return info.value.details() or ""

        details = asyncio.run(run())
    assert details.startswith("no backend available for static:///"), details
    assert "Connection refused" in details, details


# -- what Channel.backends() shows never runs ahead of the picker ----------------------------------


class _Gate:
    """Holds the gated policy's balancer calls (on the control thread) while closed."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def hold(self) -> None:
        self.entered.clear()
        self.open.clear()

    def passing(self) -> None:
        if not self.open.is_set():
            self.entered.set()
            # Bounded, so a failing test cannot leave the control thread stuck for good.
            self.open.wait(30)


class _Gated(Balancer):
    """round_robin, except that each call waits at the gate before round_robin hears of it."""

    def __init__(self, helper: BalancerHelper, gate: _Gate) -> None:
        self._gate = gate
        self._child = build_child(helper, "round_robin", None)

    def update_state(self, state: BalancerState) -> None:
        self._gate.passing()
        self._child.update_state(state)

    def subconn_state(self, subconn: SubConn) -> None:
        self._gate.passing()
        self._child.subconn_state(subconn)

    def resolver_error(self, error: Exception) -> None:
        self._child.resolver_error(error)

    def close(self) -> None:
        self._child.close()


class _GatedBuilder(BalancerBuilder):
    name: ClassVar[str] = "test_gated_round_robin"

    def __init__(self) -> None:
        self.gate = _Gate()

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return _Gated(helper, self.gate)


@pytest.fixture
def gate() -> Iterator[_Gate]:
    builder = _GatedBuilder()
    discovery.register_balancer(builder)
    try:
        yield builder.gate
    finally:
        builder.gate.open.set()
        discovery.unregister_balancer(builder.name)


_GATED = {"loadBalancingConfig": [{_GatedBuilder.name: {}}]}


def test_a_backend_is_shown_leaving_ready_only_once_the_picker_no_longer_has_it(
        start_backends, gate: _Gate) -> None:  # type: ignore[no-untyped-def]
    # The race behind a flaky killed-backend test: the control thread records a
    # backend's new state before the balancer builds the picker without it; a
    # caller that saw the new state in backends() in between still had RPCs
    # picked for the old backend. Holding the balancer opens that window wide.
    servers = start_backends(3)
    victim, *rest = servers
    with discovery.insecure_channel(static_target(servers), service_config=_GATED) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        wait_ready(ch, 3)
        gate.hold()
        victim.stop()
        assert gate.entered.wait(10), "the balancer never heard that the victim left READY"
        # The channel knows (the victim left READY) but the picker still has the victim: not shown yet.
        core_state = next(b for b in ch._core.manager.backends if b.addr == victim.addr).state
        assert core_state is not C.READY
        assert [b.state for b in ch.backends()] == [C.READY] * 3
        gate.open.set()
        wait_for(lambda: ch.backends()[0].state is not C.READY, 10, message="the victim is shown leaving READY")
        before = victim.total
        got = collections.Counter(stub.Unary(b"", timeout=10) for _ in range(40))
        assert got == {rest[0].name.encode(): 20, rest[1].name.encode(): 20}
        assert victim.total == before


def test_an_address_set_change_is_shown_only_once_the_picker_has_it(start_backends, gate: _Gate) -> None:  # type: ignore[no-untyped-def]
    a, b, c = start_backends(3)
    builder = ManualResolverBuilder("manualgate")
    discovery.register_resolver(builder, scheme="manualgate")
    try:
        with discovery.insecure_channel("manualgate:///x", service_config=_GATED) as ch:
            resolver = builder.resolver
            resolver.push([Address(s.host, s.port) for s in (a, b)])
            stub = EchoStub(ch)
            stub.Unary(b"", timeout=10)
            wait_ready(ch, 2)
            gate.hold()
            resolver.push([Address(s.host, s.port) for s in (b, c)])
            assert gate.entered.wait(10), "the balancer never got the new address set"
            assert [x.addr for x in ch._core.manager.backends] == [b.addr, c.addr]
            # The picker still sends RPCs to a: backends() still lists a, and not c.
            assert [x.address for x in ch.backends()] == [a.addr, b.addr]
            gate.open.set()
            wait_for(lambda: [x.address for x in ch.backends()] == [b.addr, c.addr], 10,
                     message="the new address set is shown")
            before = a.total
            # a may be draining its last RPC; no new one is picked for it.
            assert {stub.Unary(b"", timeout=10) for _ in range(20)} <= {b.name.encode(), c.name.encode()}
            assert a.total == before
    finally:
        discovery.unregister_resolver("manualgate")
