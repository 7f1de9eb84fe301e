"""The grpcio internals :mod:`discovery._grpc_compat` names, pinned against the installed grpcio.

The asyncio hot path reads three internals of grpc.aio's unary calls (see
``_grpc_compat``, "grpc.aio's unary calls"). If a grpcio release moves them,
these tests say which one, instead of the channel quietly taking its slower
fallback or mis-reading a status.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from discovery import aio
from discovery._grpc_compat import AIO_EOF, AIO_STATUS_OK, aio_code_now
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
            # Wrap every backend multicallable's calls in an object without grpc's internals.
            core = ch._core  # type: ignore[attr-defined]
            for b in core.manager.backends:
                for twin in b.aio_twins.values():
                    for key, start in list(twin.callables.items()):
                        twin.callables[key] = lambda *a, _s=start, **kw: _ForeignCall(_s(*a, **kw))
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

    asyncio.run(main())
