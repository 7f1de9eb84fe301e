"""The written-out hot paths (no method config, unary request) on their unusual exits.

The common RPC skips the general attempt loop: blocking calls in
``calls.blocking.blocking_unary``, asyncio and ``.future()`` unary calls in
``calls.aio.UnaryStart``. These tests pin what the general path guarantees on
the exits the matrix tests do not reach: a cancelled call, a request that does
not serialize, and a picker or observer that wants the attempt's result.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

import discovery
from discovery import aio, observe
from discovery.testing import wait_for
from discovery.testing.servers import SERVICE, static_target

UNARY = f"/{SERVICE}/Unary"


def _no_serialize(_request: object) -> bytes:
    raise ValueError("this request does not serialize")


def _all_idle(ch: discovery.Channel | aio.Channel) -> bool:
    return all(b.in_flight == 0 for b in ch.backends())


def test_aio_cancel_while_awaited_closes_the_books(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    s.delay = 30.0  # the server holds the RPC until the client goes away

    async def main() -> None:
        async with aio.insecure_channel(static_target([s])) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            call = ch.unary_unary(UNARY)(b"x", timeout=30)
            task = asyncio.ensure_future(_await(call))
            await asyncio.to_thread(wait_for, lambda: s.active == 1, 10, message="RPC at the server")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert call.cancelled() and call.done()
            assert await call.code() is grpc.StatusCode.CANCELLED
            await asyncio.to_thread(wait_for, lambda: _all_idle(ch), 10, message="books closed")
            await asyncio.to_thread(wait_for, lambda: s.cancelled == 1, 10, message="server saw the cancel")

    asyncio.run(main())


async def _await(call: object) -> object:
    return await call  # type: ignore[misc]


async def _outcome(mc: object) -> tuple[object, object]:
    try:
        return "ok", await mc(b"x", timeout=10)  # type: ignore[operator]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()


def test_aio_request_that_does_not_serialize_ends_as_grpc_aio_ends_it(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def main() -> None:
        async with grpc.aio.insecure_channel(s.addr) as plain:
            expected = await _outcome(plain.unary_unary(UNARY, request_serializer=_no_serialize))
        async with aio.insecure_channel(static_target([s])) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            got = await _outcome(ch.unary_unary(UNARY, request_serializer=_no_serialize))
            assert got == expected
            await asyncio.to_thread(wait_for, lambda: _all_idle(ch), 10, message="books closed")
            # The channel goes on serving.
            assert await ch.unary_unary(UNARY)(b"ok", timeout=10)

    asyncio.run(main())


def test_sync_request_that_does_not_serialize_fails_as_grpcio_fails_it(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s])) as ch:
        wait_for(lambda: bool(ch.backends()) and ch.backends()[0].state is grpc.ChannelConnectivity.READY, 10)
        mc = ch.unary_unary(UNARY, request_serializer=_no_serialize)
        for call in (mc, mc.with_call):
            with pytest.raises(grpc.RpcError) as info:
                call(b"x", timeout=10)
            assert info.value.code() is grpc.StatusCode.INTERNAL
            assert info.value.details() == "Exception serializing request!"
        # A future fails as grpcio's own does (grpc.aio, underneath, would send an empty message).
        exc = mc.future(b"x", timeout=10).exception(10)
        assert exc is not None and exc.code() is grpc.StatusCode.INTERNAL
        assert exc.details() == "Exception serializing request!"
        wait_for(lambda: _all_idle(ch), 10, message="books closed")
        response, call = ch.unary_unary(UNARY).with_call(b"ok", timeout=10)
        assert response and call.code() is grpc.StatusCode.OK
    assert s.total == 1


class _Recorder(observe.Observer):
    def __init__(self) -> None:
        self.started = 0
        self.ended: list[grpc.StatusCode] = []

    def attempt_started(self, core, backend, method, attempts) -> None:  # type: ignore[no-untyped-def]
        self.started += 1

    def attempt_ended(self, core, backend, method, info) -> None:  # type: ignore[no-untyped-def]
        self.ended.append(info.code)


def test_an_observer_sees_every_attempt_of_the_hot_paths(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    rec = _Recorder()
    observe.add_observer(rec)
    try:
        with discovery.insecure_channel(static_target([s])) as ch:
            wait_for(lambda: bool(ch.backends()) and ch.backends()[0].state is grpc.ChannelConnectivity.READY, 10)
            mc = ch.unary_unary(UNARY)
            mc(b"a", timeout=10)
            mc.with_call(b"b", timeout=10)
            mc.future(b"c", timeout=10).result(10)

            async def main() -> None:
                async with aio.insecure_channel(static_target([s])) as ach:
                    await ach.unary_unary(UNARY)(b"d", timeout=10, wait_for_ready=True)

            asyncio.run(main())
            wait_for(lambda: len(rec.ended) == 4, 10, message="four attempts ended")
    finally:
        observe.remove_observer(rec)
    assert rec.started == 4 and rec.ended == [grpc.StatusCode.OK] * 4


def test_the_hot_paths_caches_forget_removed_backends(start_backends, manual) -> None:  # type: ignore[no-untyped-def]
    """Each multicallable keeps its backends' grpc multicallables by backend (sync ``_mcalls``,
    asyncio and ``.future()`` ``_starts``); a removed backend leaves when a new one comes."""
    servers = start_backends(3)
    addrs = [discovery.Address("127.0.0.1", s.port) for s in servers]
    names = [s.name.encode() for s in servers]

    def live(ch: discovery.Channel | aio.Channel, i: int) -> bool:
        """Only addrs[i] is in the set, and the i backends removed so far are closed."""
        manager = ch._core.manager  # type: ignore[union-attr]
        return {b.addr for b in manager.backends} == {str(addrs[i])} and manager.closed == i

    with discovery.insecure_channel("manual:///caches") as ch:
        mc = ch.unary_unary(UNARY)
        for i in range(3):
            manual.resolver.push([addrs[i]])
            wait_for(lambda i=i: live(ch, i), 10, message="the set changed")
            assert mc(b"x", timeout=10, wait_for_ready=True) == names[i]
            assert mc.future(b"x", timeout=10).result() == names[i]
            assert mc(b"x", timeout=10) == names[i]  # (the first may wait: the hot path now)
            assert mc.future(b"x", timeout=10).result() == names[i]
            assert {b.addr for b in mc._mcalls} == {str(addrs[i])}  # type: ignore[attr-defined]
            assert {b.addr for b in mc._fstart._starts} == {str(addrs[i])}  # type: ignore[attr-defined]

    async def main() -> None:
        async with aio.insecure_channel("manual:///caches-aio") as ach:
            amc = ach.unary_unary(UNARY)
            for i in range(3):
                manual.resolver.push([addrs[i]])
                await asyncio.to_thread(wait_for, lambda i=i: live(ach, i), 10, message="the set changed")
                assert await amc(b"x", timeout=10, wait_for_ready=True) == names[i]
                assert await amc(b"x", timeout=10) == names[i]
                assert {b.addr for b in amc._starts} == {str(addrs[i])}  # type: ignore[attr-defined]

    asyncio.run(main())
