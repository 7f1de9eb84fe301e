"""discovery.aio: the balancing channel as a grpc.aio.Channel, against real servers."""

from __future__ import annotations

import asyncio
import collections
import contextlib

import grpc
import grpc.aio
import pytest

import discovery
from discovery import aio
from discovery.testing import wait_for
from discovery.testing.servers import EchoStub, static_target

C = grpc.ChannelConnectivity



def test_is_a_grpc_aio_channel_and_balances(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)

    async def main() -> collections.Counter[bytes]:
        async with aio.insecure_channel(static_target(servers)) as ch:
            assert isinstance(ch, grpc.aio.Channel)
            await asyncio.wait_for(ch.channel_ready(), 10)
            stub = EchoStub(ch)
            await stub.Unary(b"", timeout=10)
            await asyncio.to_thread(wait_for, lambda: sum(b.state is C.READY for b in ch.backends()) == 3, 10)
            replies = await asyncio.gather(*(stub.Unary(b"", timeout=10) for _ in range(30)))
            return collections.Counter(replies)

    assert asyncio.run(main()) == {s.name.encode(): 10 for s in servers}


def test_all_four_shapes(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    name = s.name.encode()

    async def main() -> None:
        async with aio.insecure_channel(static_target([s])) as ch:
            stub = EchoStub(ch)
            call = stub.Unary(b"", timeout=10, metadata=(("x-k", "v"),))
            assert await call == name and await call.code() is grpc.StatusCode.OK
            assert ("x-k", "v") in s.last_metadata
            assert [m async for m in stub.ServerStream(b"3", timeout=10)] == [name] * 3

            async def requests():  # type: ignore[no-untyped-def]
                for r in (b"a", b"b"):
                    yield r

            assert await stub.ClientStream(requests(), timeout=10) == name + b":2"
            assert [m async for m in stub.Bidi(requests(), timeout=10)] == [name + b":a", name + b":b"]
            bidi = stub.Bidi(timeout=10)
            await bidi.write(b"x")
            assert await bidi.read() == name + b":x"
            await bidi.done_writing()
            assert await bidi.code() is grpc.StatusCode.OK

    asyncio.run(main())


def test_fail_fast_and_wait_for_ready(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)

    async def main() -> None:
        async with aio.insecure_channel(static_target(servers)) as ch:
            stub = EchoStub(ch)
            await stub.Unary(b"", timeout=10)
            for srv in servers:
                srv.stop()
            await asyncio.to_thread(wait_for, lambda: ch.get_state() is C.TRANSIENT_FAILURE, 10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(b"", timeout=30)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "0 of 2 backends ready" in info.value.details()
            waiting = asyncio.ensure_future(stub.Unary(b"", timeout=30, wait_for_ready=True))
            await asyncio.sleep(0)
            assert not waiting.done()
            await asyncio.to_thread(servers[0].start)
            assert await asyncio.wait_for(waiting, 30) == servers[0].name.encode()

    asyncio.run(main())


def test_failures_count_for_outlier_detection_and_books_balance(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(5)
    bad = servers[0]
    bad.fail_with = grpc.StatusCode.INTERNAL
    sc = {"loadBalancingConfig": [{"outlier_detection": {"interval": "0.05s", "maxEjectionPercent": 20,
                                                         "childPolicy": [{"round_robin": {}}]}}]}

    async def main() -> None:
        async with aio.insecure_channel(static_target(servers), service_config=sc) as ch:
            stub = EchoStub(ch)
            await asyncio.wait_for(ch.channel_ready(), 10)
            await asyncio.to_thread(wait_for, lambda: sum(b.state is C.READY for b in ch.backends()) == 5, 10)
            for _ in range(40):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Unary(b"", timeout=10)
            await asyncio.to_thread(wait_for, lambda: any(b.ejected for b in ch.backends()), 5)
            assert [b.address for b in ch.backends() if b.ejected] == [bad.addr]
            before = bad.total
            replies = [await stub.Unary(b"", timeout=10) for _ in range(20)]
            assert bad.total == before and bad.name.encode() not in replies
            assert all(b.in_flight == 0 for b in ch.backends())

    asyncio.run(main())


def test_close_with_grace_lets_a_stream_finish(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def main() -> None:
        ch = aio.insecure_channel(static_target([s]))
        stub = EchoStub(ch)
        await stub.Unary(b"", timeout=10)
        s.gate.clear()
        stream = stub.ServerStream(b"2", timeout=30)
        await asyncio.to_thread(wait_for, lambda: s.active == 1)
        closing = asyncio.ensure_future(ch.close(grace=20))
        await asyncio.to_thread(wait_for, lambda: ch._core.closed)
        s.gate.set()
        assert [m async for m in stream] == [s.name.encode()] * 2
        await closing

    asyncio.run(main())


def test_same_factories_as_the_sync_module() -> None:
    for name in ("insecure_channel", "secure_channel", "channel_from_config"):
        assert callable(getattr(aio, name)) and callable(getattr(discovery, name))
    with pytest.raises(discovery.TargetError):
        aio.insecure_channel("static:///")


def _on_done(call: grpc.aio.Call) -> asyncio.Event:
    fired = asyncio.Event()
    call.add_done_callback(lambda c: fired.set() if c is call else None)
    return fired


def test_a_done_callback_fires_though_nobody_awaits_the_call(start_backends) -> None:  # type: ignore[no-untyped-def]
    """As with grpc.aio: a call runs to its end, and its done-callbacks run, whether or not
    it is awaited; the channel drives re-picks and retries itself meanwhile."""
    ok, failing = start_backends(2)
    failing.fail_with = grpc.StatusCode.UNAVAILABLE
    retry = {"methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]}}]}

    async def main() -> None:
        async with aio.insecure_channel(static_target([ok])) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            call = EchoStub(ch).Unary(b"x", timeout=10)  # the fast path: no method config
            await asyncio.wait_for(_on_done(call).wait(), 10)
            assert call.done() and await call.code() is grpc.StatusCode.OK
            assert await call == ok.name.encode()
        async with aio.insecure_channel(static_target([ok, failing]), service_config=retry) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            await asyncio.to_thread(wait_for, lambda: len(ch.backends()) == 2 and all(
                b.state is C.READY for b in ch.backends()), 10, message="both backends READY")
            calls = [EchoStub(ch).Unary(b"x", timeout=10) for _ in range(6)]
            for call in calls:
                await asyncio.wait_for(_on_done(call).wait(), 10)
            # Round robin sent some first attempts to the failing backend: retried unawaited.
            assert failing.total >= 1
            assert {await call.code() for call in calls} == {grpc.StatusCode.OK}
            assert {await call for call in calls} == {ok.name.encode()}
            await asyncio.to_thread(wait_for, lambda: all(b.in_flight == 0 for b in ch.backends()), 10,
                                    message="books closed")

    asyncio.run(main())


def test_a_stream_waiting_for_a_backend_still_calls_its_done_callback(start_backends, manual) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def collect(call: grpc.aio.UnaryStreamCall) -> list[bytes]:  # type: ignore[type-arg]
        return [m async for m in call]

    async def main() -> None:
        async with aio.insecure_channel("manual:///waiting") as ch:
            # No address yet: the call waits for a backend (wait_for_ready).
            call = EchoStub(ch).ServerStream(b"3", timeout=30, wait_for_ready=True)
            fired = _on_done(call)  # the callbacks' own task now waits for a pick ...
            reader = asyncio.ensure_future(collect(call))
            await asyncio.sleep(0)  # ... and so does the reader, once it has run
            manual.resolver.push([discovery.Address("127.0.0.1", s.port)])
            assert await asyncio.wait_for(reader, 10) == [s.name.encode()] * 3
            await asyncio.wait_for(fired.wait(), 10)
            assert await call.code() is grpc.StatusCode.OK
            assert s.total == 1  # one attempt: whichever pick came second did not start another

    asyncio.run(main())
