"""Interceptors on every call shape: ``grpc.intercept_channel`` over a sync channel, and
grpc.aio's interceptor classes through ``discovery.aio``'s ``interceptors=``.

An interceptor sees each RPC once, whatever the channel does below it (retries,
re-picks, hedges), and what it adds to the metadata reaches every attempt.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import grpc
import grpc.aio
import pytest
from callshapes import METHOD, SHAPES, SINGLE_REQUEST, LoopThread, is_aio, method_config
from grpc.aio import _interceptor as grpc_aio_interceptor

from discovery import ConfigError, aio
from discovery.testing import wait_ready
from discovery.testing.servers import SERVICE, EchoStub, static_target

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
MARK = ("x-intercepted", "yes")
RETRY = {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
         "retryableStatusCodes": ["UNAVAILABLE"]}


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class SyncRecorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds MARK to the metadata and counts the RPCs it saw, by method."""

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _mark(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        with self._lock:
            self.seen[d.method.rsplit("/", 1)[-1]] += 1
        return _Details(d.method, d.timeout, [*(d.metadata or ()), MARK], d.credentials, d.wait_for_ready,
                        d.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._mark(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._mark(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._mark(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._mark(client_call_details), request_iterator)


class _AioMark:
    def __init__(self, seen: collections.Counter[str]) -> None:
        self.seen = seen

    def _mark(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        method = d.method.decode() if isinstance(d.method, bytes) else d.method
        self.seen[method.rsplit("/", 1)[-1]] += 1
        return grpc.aio.ClientCallDetails(d.method, d.timeout, grpc.aio.Metadata(*(d.metadata or ()), MARK),
                                          d.credentials, d.wait_for_ready)


# grpc.aio files an interceptor under the first interceptor type it is: one class per RPC kind.
class AioUU(_AioMark, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._mark(client_call_details), request)


class AioUS(_AioMark, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._mark(client_call_details), request)


class AioSU(_AioMark, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._mark(client_call_details), request_iterator)


class AioSS(_AioMark, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._mark(client_call_details), request_iterator)


def _interceptors(shape: str) -> tuple[collections.Counter[str], list[Any]]:
    if is_aio(shape):
        seen: collections.Counter[str] = collections.Counter()
        return seen, [AioUU(seen), AioUS(seen), AioSU(seen), AioSS(seen)]
    rec = SyncRecorder()
    return rec.seen, [rec]


@pytest.mark.parametrize("shape", SHAPES)
def test_interceptors_see_each_rpc_once_above_retries(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    bad, good = start_backends(2)
    bad.fail_with = UNAVAILABLE
    seen, interceptors = _interceptors(shape)
    c = clients(shape, static_target([bad, good]), service_config=method_config(retryPolicy=RETRY),
                interceptors=interceptors)
    wait_ready(c.channel, 2)
    outcomes = [c.call(shape, metadata=(("x-app", "1"),)) for _ in range(4)]
    method = METHOD[shape]
    assert seen == {method: 4}, "one interception per RPC, not per attempt"
    assert bad.calls[method] >= 1
    # What the interceptor added reached every attempt, the failed ones included.
    for s in (bad, good):
        assert MARK in s.last_metadata and ("x-app", "1") in s.last_metadata
    if shape in SINGLE_REQUEST:
        assert all(o.ok and o.backend == good.name for o in outcomes)
    else:
        assert sum(not o.ok for o in outcomes) == bad.calls[method]
    c.wait_idle()


def test_aio_interceptors_with_write_and_done_writing(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    seen: collections.Counter[str] = collections.Counter()
    loop = LoopThread()

    async def main() -> tuple[bytes, list[bytes]]:
        async with aio.insecure_channel(static_target([s]), interceptors=[AioSU(seen), AioSS(seen)]) as ch:
            stub = EchoStub(ch)
            su = stub.ClientStream()
            await su.write(b"a")
            await su.write(b"b")
            await su.done_writing()
            reply = await su
            ss = stub.Bidi()
            await ss.write(b"x")
            first = await ss.read()
            await ss.done_writing()
            rest = [m async for m in ss]
            return reply, [first, *rest]

    try:
        reply, replies = loop.run(main())
    finally:
        loop.close()
    assert reply == s.name.encode() + b":2"
    assert replies == [s.name.encode() + b":x"]
    assert seen == {"ClientStream": 1, "Bidi": 1} and MARK in s.last_metadata


def test_aio_interceptor_may_reroute_and_answer_itself(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    class Reroute(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, d, request):  # type: ignore[no-untyped-def]
            if request == b"cached":
                return b"from the interceptor"  # grpc.aio wraps a plain value as the response
            # An interceptor may send the RPC to another method of the service.
            other = grpc.aio.ClientCallDetails(f"/{SERVICE}/Unary".encode(), d.timeout, d.metadata, d.credentials,
                                               d.wait_for_ready)
            return await continuation(other, request)

    loop = LoopThread()

    async def main() -> tuple[bytes, bytes]:
        async with aio.insecure_channel(static_target([s]), interceptors=[Reroute()]) as ch:
            nowhere = ch.unary_unary(f"/{SERVICE}/Nowhere")
            return await nowhere(b"", timeout=10), await nowhere(b"cached", timeout=10)

    try:
        assert loop.run(main()) == (s.name.encode(), b"from the interceptor")
    finally:
        loop.close()
    assert s.calls == {"Unary": 1}


@pytest.mark.parametrize("bad", [object(), "not a list", [grpc.UnaryUnaryClientInterceptor]])
def test_aio_interceptors_are_checked_at_the_factory(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"interceptors"):
        aio.insecure_channel("static:///127.0.0.1:1", interceptors=bad)


def test_grpc_aio_internals_relied_on() -> None:
    """discovery.aio subclasses grpc.aio's Intercepted*Call classes: pin what it relies on."""
    import inspect

    for name in ("InterceptedUnaryUnaryCall", "InterceptedUnaryStreamCall", "InterceptedStreamUnaryCall",
                 "InterceptedStreamStreamCall"):
        cls = getattr(grpc_aio_interceptor, name)
        params = list(inspect.signature(cls.__init__).parameters)[1:12]
        assert params[:7] == ["interceptors", params[1], "timeout", "metadata", "credentials", "wait_for_ready",
                              "channel"], (name, params)
        assert params[7:11] == ["method", "request_serializer", "response_deserializer", "loop"], (name, params)
        run = list(inspect.signature(cls._run_interceptor).parameters)
        assert run[:5] == ["self", "interceptors", "method", "request_serializer", "response_deserializer"], run
        assert len(run) == 7, run

