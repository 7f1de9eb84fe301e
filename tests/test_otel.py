"""discovery.otel: the picked backend, retries and hedges on client spans; the global instrumentor.

Spans go to the OpenTelemetry SDK's in-memory exporter; the instrumentation
is the standard ``opentelemetry-instrumentation-grpc``; backends are real
servers on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import discovery
import discovery.aio
import discovery.otel as dotel
from discovery.address import Address
from discovery.attempts import Attempts
from discovery.backend import Backend
from discovery.testing import wait_ready
from discovery.testing.servers import BackendServer, EchoStub, static_target

pytestmark = pytest.mark.integration

UNARY = "/discovery.testing.Echo/Unary"
Start = Callable[..., list[BackendServer]]


def _policy(kind: str, policy: dict[str, Any]) -> dict[str, Any]:
    return {"methodConfig": [{"name": [{"service": "discovery.testing.Echo", "method": "Unary"}], kind: policy}]}


RETRY = _policy("retryPolicy", {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]})
HEDGE = _policy("hedgingPolicy", {"maxAttempts": 2, "hedgingDelay": "0.05s"})


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[Callable[[], list[ReadableSpan]]]:
    exporter.clear()
    yield lambda: list(exporter.get_finished_spans())
    dotel.disable_tracing()


def port_of(server_name: bytes, servers: list[BackendServer]) -> int:
    (port,) = [s.port for s in servers if s.name.encode() == server_name]
    return port


def test_each_call_span_carries_the_backend_that_served_it(start_backends: Start, provider: TracerProvider,
                                                           spans: Callable[[], list[ReadableSpan]]) -> None:
    servers = start_backends(2)
    with discovery.insecure_channel(static_target(servers)) as ch:
        wait_ready(ch, 2)
        stub = EchoStub(dotel.instrument_channel(ch, tracer_provider=provider))
        served = [stub.Unary(b"x", timeout=5) for _ in range(2)]
        response, _call = stub.Unary.with_call(b"x", timeout=5)
        served.append(response)
        served.append(stub.Unary.future(b"x", timeout=5).result())
        streamed = list(stub.ServerStream(b"2", timeout=5))
    got = [s for s in spans() if s.name == UNARY]
    assert len(got) == 4
    assert {port_of(r, servers) for r in served} == {s.port for s in servers}  # both backends served
    for span, response in zip(got, served, strict=True):
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == port_of(response, servers)
        assert span.events == ()
    (stream_span,) = [s for s in spans() if s.name == "/discovery.testing.Echo/ServerStream"]
    assert stream_span.attributes is not None
    assert stream_span.attributes["server.port"] == port_of(streamed[0], servers)


def test_retries_are_span_events(start_backends: Start, provider: TracerProvider,
                                 spans: Callable[[], list[ReadableSpan]]) -> None:
    bad, good = start_backends(2)
    bad.fail_with = grpc.StatusCode.UNAVAILABLE
    with discovery.insecure_channel(static_target([bad, good]), service_config=RETRY) as ch:
        wait_ready(ch, 2)
        stub = EchoStub(dotel.instrument_channel(ch, tracer_provider=provider))
        for _ in range(4):
            assert stub.Unary(b"x", timeout=5) == good.name.encode()
        assert stub.Unary.future(b"x", timeout=5).result() == good.name.encode()
    got = [s for s in spans() if s.name == UNARY]
    assert len(got) == 5
    events = [e for s in got for e in s.events]
    # One event per attempt after the first: every failed attempt went to the bad backend.
    assert len(events) == bad.calls["Unary"] > 0
    for span in got:
        assert span.attributes is not None
        assert span.attributes["server.port"] == good.port
        for n, event in enumerate(span.events, start=2):
            assert event.name == dotel.EVENT_RETRY
            assert dict(event.attributes or {}) == {"discovery.attempt": n, "server.address": "127.0.0.1",
                                                    "server.port": good.port}


def test_hedges_are_span_events_and_the_winner_is_the_address(
        start_backends: Start, provider: TracerProvider, spans: Callable[[], list[ReadableSpan]]) -> None:
    slow, fast = start_backends(2)
    slow.unary_gate.clear()  # holds every RPC until the client cancels it
    try:
        with discovery.insecure_channel(static_target([slow, fast]), service_config=HEDGE) as ch:
            wait_ready(ch, 2)
            stub = EchoStub(dotel.instrument_channel(ch, tracer_provider=provider))
            for _ in range(2):
                assert stub.Unary(b"x", timeout=5) == fast.name.encode()
    finally:
        slow.unary_gate.set()
    got = [s for s in spans() if s.name == UNARY]
    assert len(got) == 2
    hedges = [e for s in got for e in s.events]
    assert len(hedges) == slow.calls["Unary"] >= 1  # round robin started one of the two calls on the slow one
    for span in got:
        assert span.attributes is not None
        assert span.attributes["server.port"] == fast.port  # the winner, though the hedge started later
    for event in hedges:
        assert event.name == dotel.EVENT_HEDGE
        assert dict(event.attributes or {}) == {"discovery.attempt": 2, "server.address": "127.0.0.1",
                                                "server.port": fast.port}


def test_transparent_retry_event(provider: TracerProvider, spans: Callable[[], list[ReadableSpan]]) -> None:
    # A re-pick of an attempt that never left the client cannot be staged
    # reliably against a live server, so the observer is driven directly.
    observer = dotel.enable_tracing()
    backend = Backend(Address("127.0.0.1", 50051), None)
    att = Attempts(None, None, None, None, 3)
    att.tried.append(object())
    assert att.after_failure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses") == 0.0
    with provider.get_tracer("t").start_as_current_span(UNARY, kind=SpanKind.CLIENT):
        observer.attempt_started(None, backend, UNARY, att)  # type: ignore[arg-type]
    (span,) = spans()
    assert [e.name for e in span.events] == [dotel.EVENT_TRANSPARENT_RETRY]
    assert span.attributes is not None and span.attributes["server.port"] == 50051


def test_other_spans_are_left_alone(start_backends: Start, provider: TracerProvider,
                                    spans: Callable[[], list[ReadableSpan]]) -> None:
    (server,) = start_backends(1)
    dotel.enable_tracing()
    tracer = provider.get_tracer("app")
    with discovery.insecure_channel(static_target([server])) as ch:
        stub = EchoStub(ch)
        with tracer.start_as_current_span("handle request", kind=SpanKind.SERVER):
            stub.Unary(b"x", timeout=5, wait_for_ready=True)
        with tracer.start_as_current_span("some client call", kind=SpanKind.CLIENT):
            stub.Unary(b"x", timeout=5)
        with tracer.start_as_current_span(UNARY, kind=SpanKind.INTERNAL):
            stub.Unary(b"x", timeout=5)
    assert len(spans()) == 3
    for span in spans():
        assert "server.address" not in (span.attributes or {})


def test_disabled_tracing_adds_nothing(start_backends: Start, provider: TracerProvider,
                                       spans: Callable[[], list[ReadableSpan]]) -> None:
    (server,) = start_backends(1)
    with discovery.insecure_channel(static_target([server])) as ch:
        stub = EchoStub(dotel.instrument_channel(ch, tracer_provider=provider))
        dotel.disable_tracing()
        assert not dotel.tracing_enabled()
        stub.Unary(b"x", timeout=5, wait_for_ready=True)
    (span,) = spans()
    assert "server.address" not in (span.attributes or {})


@pytest.fixture
def global_instrumentors(exporter: InMemorySpanExporter, provider: TracerProvider) -> Iterator[None]:
    # The instrumentors trace with the global provider; it can be set once per process.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    sync, aio = GrpcInstrumentorClient(), GrpcAioInstrumentorClient()
    sync.instrument()
    aio.instrument()
    try:
        yield
    finally:
        sync.uninstrument()
        aio.uninstrument()


@pytest.mark.usefixtures("global_instrumentors")
def test_channels_keep_working_under_the_global_instrumentor(
        start_backends: Start, spans: Callable[[], list[ReadableSpan]]) -> None:
    servers = start_backends(2)
    target = static_target(servers)
    # What the instrumentor does: grpc.insecure_channel now returns an interceptor wrapper.
    plain = grpc.insecure_channel(servers[0].addr)
    assert type(plain) is not grpc._channel.Channel
    plain.close()
    with discovery.insecure_channel(target) as ch:
        wait_ready(ch, 2)
        stub = EchoStub(ch)
        assert stub.Unary(b"x", timeout=2) in {s.name.encode() for s in servers}
        assert stub.Unary.future(b"x", timeout=2).result() in {s.name.encode() for s in servers}
        assert len(list(stub.ServerStream(b"3", timeout=2))) == 3
        # Instrumented by hand, the discovery channel gets its call spans.
        traced = EchoStub(dotel.instrument_channel(ch))
        response = traced.Unary(b"x", timeout=2)

    async def run() -> bytes:
        async with discovery.aio.insecure_channel(target) as ach:
            reply: bytes = await EchoStub(ach).Unary(b"x", timeout=2, wait_for_ready=True)
            return reply

    assert asyncio.run(run()) in {s.name.encode() for s in servers}
    # Backend channels are grpc's own: only the hand-instrumented call made a span.
    (span,) = [s for s in spans() if s.name == UNARY]
    assert span.attributes is not None
    assert span.attributes["server.port"] == port_of(response, servers)
