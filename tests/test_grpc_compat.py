"""The grpcio internals :mod:`discovery._grpc_compat` names, pinned against the installed grpcio.

The asyncio hot path reads three internals of grpc.aio's unary calls (see
``_grpc_compat``, "grpc.aio's unary calls") and makes grpc.aio's
UnaryUnaryCall itself ("made without the multicallable"). If a grpcio release
moves them, these tests say which one, instead of the channel quietly taking
its slower fallback or mis-reading a status.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from discovery import aio
from discovery._grpc_compat import AIO_EOF, AIO_STATUS_OK, aio_code_now, aio_unary_parts, hand_over_calls
from discovery.testing import wait_for
from discovery.testing.servers import SERVICE, static_target

UNARY = f"/{SERVICE}/Unary"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def _call_and_callback(channel: grpc.aio.Channel) -> tuple[Any, list[tuple[Any, ...]], int]:
    call: Any = channel.unary_unary(UNARY)(b"x", timeout=10)
    seen: list[tuple[Any, ...]] = []
    # Called with no argument: the hot path registers a bound method without a partial.
    call._cython_call.add_done_callback(lambda *args: seen.append(args))
    response = await call._call_response
    return response, seen, call._cython_call._status.code()


def test_unary_call_internals_on_success_and_failure(start_backends) -> None:  # type: ignore[no-untyped-def]
    ok, failing = start_backends(2)
    failing.fail_with = UNAVAILABLE

    async def main() -> None:
        async with grpc.aio.insecure_channel(ok.addr) as ch:
            response, seen, code = await _call_and_callback(ch)
            assert response == ok.name.encode()  # the response task returns the response itself
            assert seen == [()]
            assert code == AIO_STATUS_OK
        async with grpc.aio.insecure_channel(failing.addr) as ch:
            response, seen, code = await _call_and_callback(ch)
            assert response is AIO_EOF  # a failed call's task returns EOF; grpc's __await__ raises
            assert seen == [()]
            assert code != AIO_STATUS_OK
            call: Any = ch.unary_unary(UNARY)(b"x", timeout=10)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is UNAVAILABLE
            assert aio_code_now(call) is UNAVAILABLE

    asyncio.run(main())


def test_a_cancelled_call_ends_its_task_with_eof(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    s.delay = 30.0

    async def main() -> None:
        async with grpc.aio.insecure_channel(s.addr) as ch:
            call: Any = ch.unary_unary(UNARY)(b"x", timeout=30)
            seen: list[tuple[Any, ...]] = []
            call._cython_call.add_done_callback(lambda *args: seen.append(args))
            await asyncio.to_thread(wait_for, lambda: s.active == 1, 10, message="RPC at the server")
            call.cancel()
            assert seen == [()]  # synchronously, from cancel()
            assert call._cython_call._status.code() != AIO_STATUS_OK
            assert await call._call_response is AIO_EOF

    asyncio.run(main())


class _ForeignCall:
    """A grpc.aio-style call object without grpc's internals: the fallbacks' case."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __await__(self) -> Any:
        return self._inner.__await__()

    def add_done_callback(self, cb: Any) -> None:
        self._inner.add_done_callback(cb)

    def code(self) -> Any:
        return self._inner.code()

    def cancelled(self) -> bool:
        return bool(self._inner.cancelled())

    def cancel(self) -> bool:
        return bool(self._inner.cancel())

    def details(self) -> Any:
        return self._inner.details()

    def trailing_metadata(self) -> Any:
        return self._inner.trailing_metadata()


def test_the_fast_path_falls_back_for_call_objects_that_are_not_grpcs(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def main() -> None:
        async with aio.insecure_channel(static_target([s])) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            mc = ch.unary_unary(UNARY)
            assert await mc(b"warm", timeout=10) == s.name.encode()
            # Wrap every backend multicallable's calls in an object without grpc's internals
            # (a plain function has no multicallable to take parts from: the public way).
            made: list[_ForeignCall] = []

            def foreign(start: Any) -> Any:
                def call(*args: Any, **kwargs: Any) -> _ForeignCall:
                    made.append(_ForeignCall(start(*args, **kwargs)))
                    return made[-1]
                return call

            core = ch._core  # type: ignore[attr-defined]
            for b in core.manager.backends:
                for twin in b.aio_twins.values():
                    for key, start in list(twin.callables.items()):
                        twin.callables[key] = foreign(start)
            mc._starts.clear()  # type: ignore[attr-defined]  # how the warm-up call started: forget it
            assert await mc(b"x", timeout=10) == s.name.encode()
            s.fail_with = UNAVAILABLE
            try:
                await mc(b"x", timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is UNAVAILABLE
            else:
                raise AssertionError("the RPC should have failed")
            await asyncio.to_thread(wait_for, lambda: all(b.in_flight == 0 for b in ch.backends()), 10,
                                    message="books closed through the public done-callback")
            assert len(made) == 2  # both calls were the foreign call objects

    asyncio.run(main())



class _Passthrough(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


def test_the_parts_of_grpcs_unary_calls_are_found_on_this_grpcio(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def main() -> None:
        async with grpc.aio.insecure_channel(s.addr) as plain:
            parts = aio_unary_parts(plain.unary_unary(UNARY))
            assert parts is not None, "grpc.aio's UnaryUnaryCall or multicallable changed: the slow way is taken"
            assert parts[0] is grpc.aio._call.UnaryUnaryCall
        async with grpc.aio.insecure_channel(s.addr, interceptors=[_Passthrough()]) as intercepted:
            assert aio_unary_parts(intercepted.unary_unary(UNARY)) is None
        assert aio_unary_parts(None) is None
        # The channel's hot path takes them.
        async with aio.insecure_channel(static_target([s])) as ch:
            mc = ch.unary_unary(UNARY)
            await asyncio.wait_for(ch.channel_ready(), 10)
            for _ in range(2):  # the first binds the multicallable to the loop
                assert await mc(b"x", timeout=10) == s.name.encode()
            (start,) = mc._starts.values()  # type: ignore[attr-defined]
            assert start[0] is grpc.aio._call.UnaryUnaryCall

    asyncio.run(main())


def test_calls_made_from_the_parts_behave_as_grpcs(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def main() -> None:
        async with aio.insecure_channel(static_target([s])) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            mc = ch.unary_unary(UNARY)
            assert await mc(b"x", timeout=10) == s.name.encode()  # binds mc to the loop
            # Metadata in each form grpc.aio takes reaches the server, repeated keys in order.
            pairs = (("k", "v1"), ("other", "x"), ("k", "v2"))
            for md in (pairs, list(pairs), grpc.aio.Metadata(*pairs)):
                assert await mc(b"x", timeout=10, metadata=md) == s.name.encode()
                sent = [p for p in s.last_metadata if p[0] in ("k", "other")]
                assert [p for p in sent if p[0] == "k"] == [("k", "v1"), ("k", "v2")], md
                assert ("other", "x") in sent
            # The timeout becomes grpc's deadline.
            s.delay = 5.0
            call = mc(b"x", timeout=0.2)
            assert 0 < call.time_remaining() <= 0.2
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                raise AssertionError("the deadline should have passed")
            s.delay = 0.0
            # Compression rewrites the metadata: grpc's multicallable does that.
            assert await mc(b"x", timeout=10, compression=grpc.Compression.Gzip) == s.name.encode()
            # Done calls leave the backend channel's set.
            twins = [t for b in ch._core.manager.backends for t in b.aio_twins.values()]  # type: ignore[attr-defined]
            await asyncio.to_thread(wait_for, lambda: all(not t.active for t in twins), 10,
                                    message="done calls leave the set")

    asyncio.run(main())


def test_closing_cancels_calls_made_from_the_parts_as_grpc_aio_does(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def outcome(channel: Any, ready: Any, direct: bool = False) -> str:
        await asyncio.wait_for(ready(), 10)
        mc = channel.unary_unary(UNARY)
        assert await mc(b"x", timeout=10) == s.name.encode()  # binds mc to the loop
        s.unary_gate.clear()
        call = mc(b"x", timeout=30)
        if direct:  # made from the parts, so grpc's channel does not know it until close
            assert call._args[10] in call._args[11]
        before = s.cancelled
        await asyncio.to_thread(wait_for, lambda: s.active == 1, 10, message="RPC at the server")
        await channel.close()
        try:
            await call
        except asyncio.CancelledError:
            result = "CancelledError"
        except grpc.aio.AioRpcError as exc:
            result = f"AioRpcError {exc.code().name}"
        else:
            result = "answered"
        await asyncio.to_thread(wait_for, lambda: s.cancelled == before + 1 and s.active == 0, 10,
                                message="the server saw the cancel")
        s.unary_gate.set()
        return result

    async def main() -> None:
        plain = grpc.aio.insecure_channel(s.addr)
        expected = await outcome(plain, plain.channel_ready)
        ch = aio.insecure_channel(static_target([s]))
        assert await outcome(ch, ch.channel_ready, direct=True) == expected

    asyncio.run(main())


def test_calls_are_cancelled_here_where_grpc_keeps_no_registry() -> None:
    class Call:
        cancelled = False

        def cancel(self) -> bool:
            self.cancelled = True
            return True

    calls: set[Any] = {Call(), Call()}
    kept = set(calls)
    hand_over_calls(object(), calls)  # type: ignore[arg-type]  # a channel without _active_calls
    assert not calls and all(c.cancelled for c in kept)

    class WithRegistry:
        _active_calls: set[Any] = set()

    calls = {Call()}
    kept = set(calls)
    hand_over_calls(WithRegistry(), calls)  # type: ignore[arg-type]
    assert not calls and WithRegistry._active_calls == kept and not any(c.cancelled for c in kept)
