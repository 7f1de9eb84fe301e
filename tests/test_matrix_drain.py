"""Feature x call shape: drain. A backend removed from the address set stops being picked at
once; its in-flight RPCs of every shape finish normally, then its channel closes. And the race
of issue 9: RPCs racing 150 remove/add cycles of a static set never see a raw ValueError or an
RpcError, and every in-flight count ends at 0."""

from __future__ import annotations

import sys
import threading

import grpc
import pytest
from callshapes import METHOD, SHAPES
from policies import StalePickBuilder, registered

import discovery
from discovery import Address
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import EchoStub

C = grpc.ChannelConnectivity


def _addr(s) -> Address:  # type: ignore[no-untyped-def]
    return Address("127.0.0.1", s.port)


@pytest.mark.parametrize("shape", SHAPES)
def test_removed_backend_finishes_its_rpcs_then_closes(shape, start_backends, clients, manual) -> None:  # type: ignore[no-untyped-def]
    a, b = start_backends(2)
    c = clients(shape, "manual:///drain")
    manual.resolver.push([_addr(a)])
    assert c.call(shape).backend == a.name
    method = METHOD[shape]
    # Hold one RPC on a: unary responses and server streams at the server's gates,
    # request streams from the client's own iterator.
    a.unary_gate.clear()
    a.gate.clear()
    hold = threading.Event()
    try:
        held = c.start(shape, timeout=30, hold=hold)
        wait_for(lambda: a.calls[method] == 2, 10, message="the held RPC reached a")
        manual.resolver.push([_addr(b)])
        wait_for(lambda: [x.address for x in c.backends()] == [b.addr], 10, message="a removed")
        # Not picked any more, while it drains.
        assert c.call(shape).backend == b.name
        core = c.core
        assert len(core.manager.draining) == 1 and core.manager.closed == 0
    finally:
        a.unary_gate.set()
        a.gate.set()
        hold.set()
    out = held.result(30)
    assert out.ok and out.backend == a.name, out
    wait_for(lambda: core.manager.closed == 1 and not core.manager.draining, 10, message="a closed after draining")
    c.wait_idle()


@pytest.mark.parametrize("shape", SHAPES)
def test_an_rpc_holding_a_stale_pick_is_repicked(shape, start_backends, clients, manual) -> None:  # type: ignore[no-untyped-def]
    a, b = start_backends(2)
    policy = StalePickBuilder()
    with registered(policy):
        c = clients(shape, "manual:///stale", service_config={"loadBalancingConfig": [{"stale_pick": {}}]})
        manual.resolver.push([_addr(a), _addr(b)])
        wait_ready(c.channel, 2)
        assert c.call(shape).backend == b.name
        policy.arm()
        try:
            pending = c.start(shape)
            assert policy.entered.wait(10), "the RPC is inside pick()"
            # b leaves the address set and, idle, is closed while the RPC still holds its pick.
            manual.resolver.push([_addr(a)])
            core = c.core
            wait_for(lambda: core.manager.closed == 1, 10, message="b closed")
        finally:
            policy.release.set()
        out = pending.result(30)
    # Refused by the closed backend before anything was sent: re-picked, no error.
    assert out.ok and out.backend == a.name, out
    assert b.calls[METHOD[shape]] == 1
    c.wait_idle()


def test_rpcs_racing_address_set_changes(start_backends, manual) -> None:  # type: ignore[no-untyped-def]
    """Issue 9's race: 2 RPC threads (blocking calls and futures), 150 remove/add cycles."""
    a, b = start_backends(2)
    settings = discovery.ChannelSettings(fast_poll=0.002)
    with discovery.insecure_channel("manual:///race", settings=settings) as ch:
        stub = EchoStub(ch)
        manual.resolver.push([_addr(a), _addr(b)])
        wait_ready(ch, 2)
        stop = threading.Event()
        errors: list[BaseException] = []
        done = [0, 0]
        rpcs = [lambda: stub.Unary(b"", timeout=10), lambda: stub.Unary.future(b"", timeout=10).result(10)]

        def worker(i: int) -> None:
            while not stop.is_set():
                try:
                    rpcs[i]()
                    done[i] += 1
                except BaseException as exc:  # ValueError included: nothing may escape
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        # Switch threads far more often than every 5 ms, so that the control thread
        # can close b between an RPC's pick and its start: the race under test.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        for t in threads:
            t.start()
        try:
            for _ in range(150):
                before = b.total
                manual.resolver.push([_addr(a), _addr(b)])
                # RPCs are going to b (it is in the picker they read) when it is removed again.
                wait_for(lambda: b.total > before, 10, message="RPCs reach the re-added b")  # noqa: B023
                manual.resolver.push([_addr(a)])
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            sys.setswitchinterval(interval)
        assert errors == []
        assert min(done) > 0
        core = ch._core
        # 150 removals of b, each closed (the b of the first push included); the last
        # removal may still be on its way through the control thread.
        wait_for(lambda: core.manager.closed == 150 and not core.manager.draining, 35,
                 message="every removed backend closed")
        assert all(x.in_flight == 0 for x in core.manager.backends)
        assert core.manager.closed == 150
