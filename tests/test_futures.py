"""``.future()`` on the balancing channel: grpc.aio calls on one shared loop thread."""

from __future__ import annotations

import collections
import threading

import grpc
import pytest

import discovery
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import EchoStub, static_target

C = grpc.ChannelConnectivity




def test_many_futures_spread_evenly_without_a_thread_per_call(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(4)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        stub.Unary.future(b"", timeout=10).result()
        wait_ready(ch, 4)
        for _ in servers:  # round robin: one future per backend warms its twin connection
            stub.Unary.future(b"", timeout=10).result()
        started = 0
        real_start = threading.Thread.start

        def counting_start(self: threading.Thread) -> None:
            nonlocal started
            if "ThreadPoolExecutor" not in self.name:  # the in-process servers' own workers
                started += 1
            real_start(self)

        threading.Thread.start = counting_start  # type: ignore[method-assign]
        try:
            futures = [stub.Unary.future(b"", timeout=10) for _ in range(400)]
            got = collections.Counter(f.result(10) for f in futures)
        finally:
            threading.Thread.start = real_start  # type: ignore[method-assign]
        assert got == {s.name.encode(): 100 for s in servers}
        assert started == 0
        wait_for(lambda: all(b.in_flight == 0 for b in ch.backends()), message="in-flight back to 0")


def test_future_behaves_like_grpcs(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        f = stub.Unary.future(b"", timeout=10, metadata=[("x-k", "v")])
        assert f.result(10) == s.name.encode()
        assert f.done() and not f.running() and not f.cancelled()
        assert f.code() is grpc.StatusCode.OK and f.exception() is None
        assert ("x-k", "v") in s.last_metadata
        seen: list[object] = []
        f.add_done_callback(seen.append)  # already done: runs at once
        assert seen == [f]

        s.fail_with = grpc.StatusCode.NOT_FOUND
        f = stub.Unary.future(b"", timeout=10)
        err = f.exception(10)
        assert isinstance(err, grpc.RpcError) and err.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):
            f.result()
        assert f.code() is grpc.StatusCode.NOT_FOUND and "NOT_FOUND" in f.details()


def test_cancel_reaches_the_server_and_the_books_balance(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        s.unary_gate.clear()
        try:
            f = stub.Unary.future(b"", timeout=30)
            wait_for(lambda: s.active == 1, message="call held on the server")
            callbacks = threading.Event()
            f.add_done_callback(lambda _f: callbacks.set())
            assert f.cancel()
            assert f.cancelled() and callbacks.wait(5)
            with pytest.raises(grpc.FutureCancelledError):
                f.result()
            wait_for(lambda: s.active == 0, message="server saw the cancellation")
            wait_for(lambda: ch.backends()[0].in_flight == 0, message="in-flight back to 0")
        finally:
            s.unary_gate.set()


def test_deadline_of_a_future(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        s.unary_gate.clear()
        try:
            f = stub.Unary.future(b"", timeout=0.3)
            assert f.exception(10).code() is grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            s.unary_gate.set()


def test_waiting_in_a_done_callback_raises_instead_of_deadlocking(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        stub.Unary(b"", timeout=10)
        s.unary_gate.clear()
        try:
            outcome: list[BaseException | object] = []
            done = threading.Event()
            short = stub.Unary.future(b"", timeout=0.3)  # ends on the loop thread at its deadline
            long = stub.Unary.future(b"", timeout=30)

            def cb(_f: object) -> None:
                try:
                    outcome.append(long.result())
                except BaseException as exc:
                    outcome.append(exc)
                done.set()

            short.add_done_callback(cb)
            assert done.wait(10)
            assert isinstance(outcome[0], RuntimeError) and "would deadlock" in str(outcome[0])
        finally:
            s.unary_gate.set()
        assert long.result(10) == s.name.encode()


def test_removed_backend_drains_its_futures(start_backends, manual) -> None:  # type: ignore[no-untyped-def]
    from discovery import Address

    a, b = start_backends(2)
    with discovery.insecure_channel("manual:///x") as ch:
        stub = EchoStub(ch)
        manual.resolver.push([Address("127.0.0.1", a.port)])
        stub.Unary(b"", timeout=10)
        a.unary_gate.clear()
        held = [stub.Unary.future(b"", timeout=30) for _ in range(3)]
        wait_for(lambda: a.active == 3, message="futures held on a")
        manual.resolver.push([Address("127.0.0.1", b.port)])
        wait_for(lambda: [x.address for x in ch.backends()] == [b.addr], message="a removed")
        assert stub.Unary.future(b"", timeout=10).result() == b.name.encode()
        a.unary_gate.set()
        assert [f.result(10) for f in held] == [a.name.encode()] * 3
        core = ch._core
        wait_for(lambda: core.manager.closed == 1 and not core.manager.draining, message="a closed after draining")


def test_futures_are_repicked_when_a_backend_just_died(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    with discovery.insecure_channel(static_target(servers)) as ch:
        stub = EchoStub(ch)
        for _ in range(4):
            stub.Unary.future(b"", timeout=10).result()
        wait_ready(ch, 2)
        servers[0].stop()
        got = collections.Counter(stub.Unary.future(b"", timeout=10).result(10) for _ in range(10))
        assert got == {servers[1].name.encode(): 10}


def test_a_blocking_request_iterator_does_not_stall_other_futures(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s])) as ch:
        stub = EchoStub(ch)
        stub.Unary.future(b"", timeout=10).result()
        release = threading.Event()

        def requests():  # type: ignore[no-untyped-def]
            yield b"a"
            release.wait(30)
            yield b"b"

        held = stub.ClientStream.future(requests(), timeout=30)
        wait_for(lambda: s.calls["ClientStream"] == 1, message="client stream started")
        # The shared futures loop is free: other futures complete while the iterator blocks.
        assert stub.Unary.future(b"", timeout=10).result(10) == s.name.encode()
        assert not held.done()
        release.set()
        assert held.result(10) == s.name.encode() + b":2"


def test_a_failing_request_iterator_fails_the_future_as_grpcio_does(start_backends) -> None:  # type: ignore[no-untyped-def]
    import grpc as grpc_

    (s,) = start_backends(1)

    def requests():  # type: ignore[no-untyped-def]
        yield b"a"
        raise RuntimeError("the application's iterator failed")

    plain = grpc_.insecure_channel(s.addr)
    try:
        expected = EchoStub(plain).ClientStream.future(requests(), timeout=10).exception(10)
    finally:
        plain.close()
    with discovery.insecure_channel(static_target([s])) as ch:
        got = EchoStub(ch).ClientStream.future(requests(), timeout=10).exception(10)
    assert (got.code(), got.details()) == (expected.code(), expected.details())
    assert got.code() is grpc.StatusCode.UNKNOWN


class _Odd(BaseException):
    """Neither an Exception nor anything grpc.aio raises."""


class _YieldsThenRaises:
    """A call-like awaitable that suspends once on a future, then raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __await__(self):  # type: ignore[no-untyped-def]
        import asyncio

        fut = asyncio.get_running_loop().create_future()
        fut.get_loop().call_soon(fut.set_result, None)
        yield from fut.__await__()
        raise self.exc

    def cancel(self) -> bool:
        return False


def test_a_future_finishes_whatever_its_call_raises() -> None:
    # Any exception out of the call, even one that is no Exception, ends the future
    # (UNKNOWN) instead of leaving its caller waiting forever.
    from discovery._futures import future_on_loop, shared_loop

    loop = shared_loop()
    seen: list[BaseException] = []
    loop.loop.call_soon_threadsafe(loop.loop.set_exception_handler, lambda _l, ctx: seen.append(ctx["exception"]))
    try:
        f = future_on_loop(loop, lambda: _YieldsThenRaises(_Odd("odd")), 10)
        exc = f.exception(10)
        assert exc is not None and exc.code() is grpc.StatusCode.UNKNOWN and "_Odd: odd" in exc.details()
        # The exception itself goes on to the loop's handler, as asyncio does with it.
        wait_for(lambda: bool(seen), 10, message="the loop's exception handler saw it")
        assert isinstance(seen[0], _Odd)
        f = future_on_loop(loop, lambda: _YieldsThenRaises(ValueError("bad")), 10)
        assert f.exception(10).details() == "ValueError: bad"
    finally:
        loop.loop.call_soon_threadsafe(loop.loop.set_exception_handler, None)
