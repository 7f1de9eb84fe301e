"""OpenTelemetry: the picked backend, retries and hedges on each call's client span (extra ``otel``).

::

    import discovery, discovery.otel

    orders = discovery.insecure_channel("dns:///orders.internal:50051")
    channel = discovery.otel.instrument_channel(orders)   # then stubs on `channel`

which is the standard instrumentation applied by hand (``intercept_channel``
of ``opentelemetry.instrumentation.grpc.grpcext`` with its
``client_interceptor()``) plus :func:`enable_tracing`.

With the standard grpc client instrumentation (``opentelemetry-instrumentation-grpc``)
applied to a discovery channel, every call gets a client span as with a
plain grpc channel. :func:`enable_tracing` adds what only the balancing
channel knows:

- ``server.address`` and ``server.port`` (the RPC semantic conventions):
  the backend the call went to (for a retried call, the last attempt's; for
  a hedged one, the winner's when it is known, else the last started);
- one span event per attempt after the first: ``discovery.retry`` (a
  ``retryPolicy`` retry), ``discovery.hedge`` (a ``hedgingPolicy`` copy) or
  ``discovery.transparent_retry`` (a re-pick of an attempt that never left
  the client), with the attributes ``discovery.attempt`` (its number, from
  1), ``server.address`` and ``server.port``.

Only a span that is the client span of that very RPC is touched: current
where the attempt starts, recording, of kind CLIENT and named as the method
(``/pkg.Service/Method``, as the grpc instrumentation names its spans). A
server span or any other span of the application is left alone. The span is
found on the caller's thread for blocking calls and streams, and in the
caller's context for ``.future()`` and hedged calls, which the channel
carries to its event loop.

Turning the global instrumentor on (``GrpcInstrumentorClient().instrument()``,
which wraps ``grpc.insecure_channel``) is fine too: the channel's backend
channels then carry OpenTelemetry's interceptor and each attempt gets a span of
its own (a child of the call's span when the discovery channel is
instrumented as above).

Blocking: nothing here blocks; :func:`enable_tracing` is thread-safe.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("discovery.otel needs opentelemetry-api: pip install 'grpc-discovery[otel]'") from exc

import grpc

from . import observe

if TYPE_CHECKING:
    from .attempts import Attempts
    from .backend import Backend
    from .balancer import DoneInfo
    from .core import ChannelCore

__all__ = ["EVENT_HEDGE", "EVENT_RETRY", "EVENT_TRANSPARENT_RETRY", "TracingObserver", "disable_tracing",
           "enable_tracing", "instrument_channel", "tracing_enabled"]

EVENT_RETRY = "discovery.retry"
EVENT_HEDGE = "discovery.hedge"
EVENT_TRANSPARENT_RETRY = "discovery.transparent_retry"

_OK = grpc.StatusCode.OK
_CLIENT = SpanKind.CLIENT

_lock = threading.Lock()
_active: TracingObserver | None = None


def _call_span(method: str) -> Span | None:
    """The current span if it is the client span of an RPC of ``method``, else None."""
    span = trace.get_current_span()
    # The SDK's spans say their name and kind; a span that does not is not ours to annotate.
    if getattr(span, "name", None) != method or getattr(span, "kind", None) is not _CLIENT:
        return None
    return span if span.is_recording() else None


class TracingObserver(observe.Observer):
    """Writes the picked backend and the retries and hedges on the call's client span."""

    def attempt_started(self, core: ChannelCore, backend: Backend, method: str, att: Attempts | None) -> None:
        span = _call_span(method)
        if span is None:
            return
        a = backend.address
        span.set_attributes({"server.address": a.host, "server.port": a.port})
        if att is None or not att.tried:
            return
        if att.hedging is not None:
            name = EVENT_HEDGE
        else:
            name = EVENT_TRANSPARENT_RETRY if att.last_transparent else EVENT_RETRY
        span.add_event(name, {"discovery.attempt": len(att.tried) + 1, "server.address": a.host,
                              "server.port": a.port})

    def attempt_ended(self, core: ChannelCore, backend: Backend, method: str, info: DoneInfo) -> None:
        # The attempt that succeeded decides the call: a hedge that started
        # earlier than the last one may win.
        if info.code is not _OK:
            return
        span = _call_span(method)
        if span is not None:
            a = backend.address
            span.set_attributes({"server.address": a.host, "server.port": a.port})


def instrument_channel(channel: grpc.Channel, *, tracer_provider: TracerProvider | None = None,
                       **kwargs: Any) -> grpc.Channel:
    """``channel`` wrapped in the standard grpc client instrumentation, with :func:`enable_tracing` on.

    The same as ``opentelemetry.instrumentation.grpc.grpcext.intercept_channel(channel,
    client_interceptor(tracer_provider, **kwargs))`` (``kwargs``: ``filter_``,
    ``request_hook``, ``response_hook``). Needs ``opentelemetry-instrumentation-grpc``.
    The result is a plain ``grpc.Channel``: keep the discovery channel for
    ``backends()`` and ``close()``.
    """
    try:
        from opentelemetry.instrumentation.grpc import client_interceptor
        from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
    except ImportError as exc:
        raise ImportError("discovery.otel.instrument_channel needs the grpc instrumentation: "
                          "pip install opentelemetry-instrumentation-grpc") from exc
    enable_tracing()
    interceptor = client_interceptor(tracer_provider=tracer_provider, **kwargs)  # type: ignore[no-untyped-call]
    wrapped: grpc.Channel = intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
    return wrapped


def enable_tracing() -> TracingObserver:
    """Annotate client spans of every channel of the process (existing ones too). Idempotent."""
    global _active
    with _lock:
        if _active is None:
            _active = TracingObserver()
            observe.add_observer(_active)
        return _active


def disable_tracing() -> None:
    """Stop annotating spans. Idempotent."""
    global _active
    with _lock:
        if _active is not None:
            observe.remove_observer(_active)
            _active = None


def tracing_enabled() -> bool:
    """Whether :func:`enable_tracing` is in force."""
    return _active is not None
