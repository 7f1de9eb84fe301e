"""The channel core: a failing policy or an unusable address set never leaves RPCs hanging."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import pytest

import discovery
from discovery import Address, ResolverState
from discovery.balancer import Balancer, BalancerBuilder, BalancerHelper, BalancerState, SubConn
from discovery.testing import ManualResolverBuilder, wait_for
from discovery.testing.servers import EchoStub, static_target


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
