"""The routing policies end to end: real grpc servers on loopback, per-address data from the
static resolver's ``endpoints``, every call shape on the sync channel (unary, with_call,
future, three streams) and on discovery.aio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
import xxhash
from routing_support import routing_policies

import discovery
from discovery import aio
from discovery.balancers.ring_hash import build_ring
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub, static_target

__all__ = ["routing_policies"]
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("routing_policies")]

Md = tuple[tuple[str, str], ...]


def sync_shapes(ch: grpc.Channel, md: Md) -> list[str]:
    """One RPC of every shape; the name of the backend that served each."""
    stub = EchoStub(ch)
    out = [stub.Unary(b"", timeout=10, metadata=md).decode(),
           stub.Unary.with_call(b"", timeout=10, metadata=md)[0].decode(),
           stub.Unary.future(b"", timeout=10, metadata=md).result().decode()]
    out += [m.decode() for m in stub.ServerStream(b"2", timeout=10, metadata=md)]
    out.append(stub.ClientStream(iter([b"a", b"b"]), timeout=10, metadata=md).decode().rsplit(":", 1)[0])
    out += [m.decode().rsplit(":", 1)[0] for m in stub.Bidi(iter([b"x"]), timeout=10, metadata=md)]
    return out


async def aio_shapes(ch: grpc.aio.Channel, md: Md) -> list[str]:
    stub = EchoStub(ch)  # type: ignore[arg-type]

    async def two() -> Any:
        for r in (b"a", b"b"):
            yield r

    out = [(await stub.Unary(b"", timeout=10, metadata=md)).decode()]
    out += [m.decode() async for m in stub.ServerStream(b"2", timeout=10, metadata=md)]
    out.append((await stub.ClientStream(two(), timeout=10, metadata=md)).decode().rsplit(":", 1)[0])
    out += [m.decode().rsplit(":", 1)[0] async for m in stub.Bidi(two(), timeout=10, metadata=md)]
    return out


def aio_run(target: str, sc: dict[str, Any], rc: dict[str, Any], fn: Callable[[grpc.aio.Channel], Any]) -> Any:
    async def main() -> Any:
        async with aio.insecure_channel(target, service_config=sc, resolver_config=rc) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            return await fn(ch)
    return asyncio.run(main())


@pytest.fixture
def servers() -> Iterator[Callable[[int], list[BackendServer]]]:
    started: list[BackendServer] = []

    def start(n: int) -> list[BackendServer]:
        out = [BackendServer("127.0.0.1").start() for _ in range(n)]
        started.extend(out)
        return out

    yield start
    for s in started:
        s.stop()


def endpoints(**by_addr: dict[str, Any]) -> dict[str, Any]:
    return {"endpoints": by_addr}


def lb(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"loadBalancingConfig": [{name: config}]}


def serve_by(ch: grpc.Channel, md: Md = ()) -> str | None:
    """The backend serving one unary RPC now, or None if it failed (while backends change)."""
    try:
        return EchoStub(ch).Unary(b"", timeout=5, metadata=md).decode()  # type: ignore[no-any-return]
    except grpc.RpcError:
        return None


# -- ring_hash -------------------------------------------------------------------------


def test_ring_hash_same_key_same_backend_on_every_shape_and_failover(servers: Any) -> None:
    srv = servers(4)
    sc = lb("ring_hash", {"requestHashHeader": "x-user"})
    addrs = [s.addr for s in srv]
    hashes, owners = build_ring(addrs, [1] * 4, 1024, 4096)

    def owner(user: str, skip: str | None = None) -> str:
        i = next(i for i, h in enumerate([*hashes, 2 ** 64]) if h >= xxhash.xxh64_intdigest(user.encode()))
        return next(addrs[owners[(i + k) % len(owners)]] for k in range(len(owners))
                    if addrs[owners[(i + k) % len(owners)]] != skip)

    users = [f"user-{i}" for i in range(12)]
    with discovery.insecure_channel(static_target(srv), service_config=sc) as ch:
        for u in users:
            assert set(sync_shapes(ch, (("x-user", u),))) == {owner(u)}, u
        assert len({owner(u) for u in users}) >= 3
        # Its backend stops: the key goes to the next distinct backend on the ring, and comes back.
        u = users[0]
        home = next(s for s in srv if s.addr == owner(u))
        home.stop()
        wait_for(lambda: serve_by(ch, (("x-user", u),)) == owner(u, skip=home.addr), 10)
        assert set(sync_shapes(ch, (("x-user", u),))) == {owner(u, skip=home.addr)}
        home.start()
        wait_for(lambda: serve_by(ch, (("x-user", u),)) == home.addr, 15)

    async def check(ch: grpc.aio.Channel) -> None:
        for u in users:
            assert set(await aio_shapes(ch, (("x-user", u),))) == {owner(u)}, u

    aio_run(static_target(srv), sc, {}, check)


def test_ring_hash_first_rpc_to_an_idle_backend_does_not_wait_for_the_full_poll(servers: Any) -> None:
    # ring_hash connects a backend lazily, from a pick. The control loop must poll
    # that connection at the fast rate: with a full poll only every 60 s, every
    # first RPC to a backend would otherwise wait out its 5 s deadline.
    srv = servers(3)
    settings = discovery.ChannelSettings(slow_poll=60.0)
    with discovery.insecure_channel(static_target(srv), service_config=lb("ring_hash", {"requestHashHeader": "x-user"}),
                                    settings=settings) as ch:
        served = {EchoStub(ch).Unary(b"", timeout=5, metadata=(("x-user", f"user-{i}"),)).decode() for i in range(12)}
    assert len(served) >= 2


def test_outlier_detection_over_ring_hash_moves_a_failing_backends_keys(servers: Any) -> None:
    srv = servers(3)
    sc = lb("outlier_detection", {"consecutiveErrors": 3, "maxEjectionPercent": 50, "interval": "60s",
                                  "childPolicy": [{"ring_hash": {"requestHashHeader": "x-user"}}]})
    with discovery.insecure_channel(static_target(srv), service_config=sc) as ch:
        md = (("x-user", "carol"),)
        home = EchoStub(ch).Unary(b"", timeout=10, metadata=md).decode()
        bad = next(s for s in srv if s.addr == home)
        bad.fail_with = grpc.StatusCode.INTERNAL
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                EchoStub(ch).Unary(b"", timeout=10, metadata=md)
        wait_for(lambda: [b.address for b in ch.backends() if b.ejected] == [home], 5)
        got = set(sync_shapes(ch, md))
        assert home not in got and len(got) == 1  # served elsewhere now, still by one backend


# -- subset ------------------------------------------------------------------------------


def test_subset_routes_every_shape_and_fallback_none_names_the_value(servers: Any) -> None:
    srv = servers(4)
    rc = endpoints(**{s.addr: {"attributes": {"version": v}} for s, v in zip(srv, ("v1", "v1", "v2", "v2"),
                                                                                strict=True)})
    sc = lb("subset", {"header": "x-version", "attribute": "version", "fallback": "none"})
    v2 = {srv[2].addr, srv[3].addr}
    with discovery.insecure_channel(static_target(srv), service_config=sc, resolver_config=rc) as ch:
        wait_ready(ch, 4)
        got = [a for _ in range(2) for a in sync_shapes(ch, (("x-version", "v2"),))]
        assert set(got) == v2
        assert set(sync_shapes(ch, (("x-version", "v1"),))) == {srv[0].addr, srv[1].addr}
        stub = EchoStub(ch)
        for call in (lambda: stub.Unary(b"", timeout=5, metadata=(("x-version", "v3"),)),
                     lambda: stub.Unary.future(b"", timeout=5, metadata=(("x-version", "v3"),)).result(),
                     lambda: list(stub.ServerStream(b"1", timeout=5, metadata=(("x-version", "v3"),)))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "no backend has version='v3' (asked by header x-version: 'v3')" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"", timeout=5)
        assert "the RPC has no x-version header and the subset fallback is none" in info.value.details()

    async def check(ch: grpc.aio.Channel) -> None:
        assert set(await aio_shapes(ch, (("x-version", "v2"),))) <= v2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await EchoStub(ch).Unary(b"", timeout=5, metadata=(("x-version", "v3"),))  # type: ignore[arg-type]
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE and "'v3'" in (info.value.details() or "")

    aio_run(static_target(srv), sc, rc, check)


# -- priority_failover ---------------------------------------------------------------------


def test_priority_failover_every_shape_fails_over_and_comes_back(servers: Any) -> None:
    srv = servers(4)
    rc = endpoints(**{s.addr: {"priority": p} for s, p in zip(srv, (0, 0, 1, 1), strict=True)})
    sc = lb("priority_failover", {})
    p0, p1 = {srv[0].addr, srv[1].addr}, {srv[2].addr, srv[3].addr}
    with discovery.insecure_channel(static_target(srv), service_config=sc, resolver_config=rc) as ch:
        wait_ready(ch, 2)
        assert set(sync_shapes(ch, ()) + sync_shapes(ch, ())) == p0
        for s in srv[:2]:
            s.stop()
        wait_for(lambda: serve_by(ch) in p1, 10)
        assert set(sync_shapes(ch, ())) <= p1
        for s in srv[:2]:
            s.start()
        wait_for(lambda: all(serve_by(ch) in p0 for _ in range(4)), 15)

    async def check(ch: grpc.aio.Channel) -> None:
        assert set(await aio_shapes(ch, ())) <= p0

    aio_run(static_target(srv), sc, rc, check)


# -- zone_aware ------------------------------------------------------------------------------


def test_zone_aware_keeps_traffic_local_on_every_shape_and_spills_when_local_is_down(servers: Any) -> None:
    srv = servers(4)
    rc = endpoints(**{s.addr: {"zone": z} for s, z in zip(srv, ("eu-1a", "eu-1a", "eu-1b", "eu-1b"), strict=True)})
    sc = lb("zone_aware", {"localZone": "eu-1a", "minClusterSize": 0})
    local, other = {srv[0].addr, srv[1].addr}, {srv[2].addr, srv[3].addr}
    with discovery.insecure_channel(static_target(srv), service_config=sc, resolver_config=rc) as ch:
        wait_ready(ch, 4)
        assert set(sync_shapes(ch, ()) + sync_shapes(ch, ())) == local
        for s in srv[:2]:
            s.stop()
        wait_for(lambda: serve_by(ch) in other, 10)
        assert set(sync_shapes(ch, ())) <= other

    for s in srv[:2]:
        s.start()

    async def check(ch: grpc.aio.Channel) -> None:
        await asyncio.to_thread(wait_ready, ch, 2)
        assert set(await aio_shapes(ch, ())) <= local

    aio_run(static_target(srv), sc, rc, check)


def test_policies_from_a_config_file(servers: Any, tmp_path: Any) -> None:
    """A TOML file (frozen tables and lists) configures subset over priority tiers end to end."""
    srv = servers(3)
    a, b, c = (s.addr for s in srv)
    path = tmp_path / "discovery.toml"
    subset = ('subset = { header = "x-version", attribute = "tags", fallback = "default_subset", '
              'defaultSubset = { tags = "v1" }, childPolicy = [{ priority_failover = {} }] }')
    path.write_text(f"""
[services.orders]
target = "static:///{a},{b},{c}"
[services.orders.resolver.endpoints."{a}"]
attributes = {{ tags = ["v2", "canary"] }}
[services.orders.resolver.endpoints."{b}"]
attributes = {{ tags = ["v2"] }}
priority = 1
[services.orders.resolver.endpoints."{c}"]
attributes = {{ tags = ["v1"] }}
[[services.orders.service_config.loadBalancingConfig]]
{subset}
""")
    with discovery.channel_from_config("orders", path) as ch:
        wait_ready(ch, 3)
        assert set(sync_shapes(ch, (("x-version", "v2"),))) == {a}  # v2's tier 0
        assert set(sync_shapes(ch, (("x-version", "canary"),))) == {a}
        assert set(sync_shapes(ch, ())) == {c}  # the default subset
        srv[0].stop()
        wait_for(lambda: serve_by(ch, (("x-version", "v2"),)) == b, 10)  # v2 fails over to its tier 1
