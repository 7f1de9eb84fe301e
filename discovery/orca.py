"""ORCA load reports for Python grpc servers (grpcio has none; C++ and Go do).

A server that reports its load lets clients weigh it: this library's
``weighted_round_robin`` (out of band) and grpc-go, Java, C++ and Envoy
(out of band or per call). Three parts, one :class:`ServerMetrics` behind
them::

    metrics = orca.ServerMetrics()                        # cpu measured, qps/eps counted
    server = grpc.server(pool, interceptors=[orca.OrcaInterceptor(metrics)])
    orca.add_orca_service(server, metrics)                # xds.service.orca.v3.OpenRcaService
    metrics.set_application_utilization(0.4)              # optional: what the app knows best
    metrics.set_named_metric("queue_depth", 12)

- :class:`ServerMetrics`: the numbers of one server. Anything the
  application sets wins; otherwise ``cpu_utilization`` is this process's CPU
  time over the last window divided by the CPUs it may use, and
  ``rps_fractional``/``eps`` are the calls and failures the interceptor
  counted over the last window. Thread-safe.
- :func:`add_orca_service`: the out-of-band service. A client opens
  ``StreamCoreMetrics`` and gets a report every ``report_interval`` (never
  more often than ``min_report_interval``) until it cancels. Each open
  stream holds one worker thread of a sync server, as a health ``Watch``
  does: size the pool for it.
- :class:`OrcaInterceptor`: counts every RPC (and its failures) and puts the
  per-call report in the ``endpoint-load-metrics-bin`` trailer, merged with
  any trailing metadata the handler sets. Note that a *Python* client never
  sees that trailer: grpcio's core consumes it. Clients of this library use
  the out-of-band service.

The messages are upstream's (``protos/xds``, generated into
``discovery._proto``): any ORCA client understands them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from ._proto.xds.data.orca.v3.orca_load_report_pb2 import OrcaLoadReport
from ._proto.xds.service.orca.v3.orca_pb2 import OrcaLoadReportRequest

__all__ = [
    "OOB_METHOD",
    "SERVICE_NAME",
    "TRAILER_KEY",
    "OrcaInterceptor",
    "OrcaLoadReport",
    "OrcaLoadReportRequest",
    "ServerMetrics",
    "add_orca_service",
    "parse_report",
    "report_request",
    "report_values",
]

SERVICE_NAME = "xds.service.orca.v3.OpenRcaService"
OOB_METHOD = f"/{SERVICE_NAME}/StreamCoreMetrics"
TRAILER_KEY = "endpoint-load-metrics-bin"

_OK = grpc.StatusCode.OK


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check(name: str, value: float, high: float | None = None) -> float:
    v = float(value)
    if not v >= 0 or (high is not None and v > high) or v == float("inf"):
        span = f"0..{high:g}" if high is not None else ">= 0"
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}")
    return v


class ServerMetrics:
    """One server's load numbers for ORCA reports. Every method is thread-safe and never blocks long.

    ``window`` is how far back the measured numbers (CPU, qps, eps) look;
    ``clock`` and ``cpu_time`` are injectable for tests.
    """

    def __init__(self, *, window: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 cpu_time: Callable[[], float] = time.process_time, cpus: int | None = None) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        self._lock = threading.Lock()
        self._window = window
        self._clock = clock
        self._cpu_time = cpu_time
        self._cpus = cpus or _cpu_count()
        self._set: dict[str, float] = {}
        self._named: dict[str, float] = {}
        self._utilization: dict[str, float] = {}
        self._calls = 0
        self._errors = 0
        # The last closed window: (start time, calls, errors, cpu time) and its rates.
        self._mark = (clock(), 0, 0, cpu_time())
        self._rates = (0.0, 0.0, 0.0)  # qps, eps, cpu utilization

    # -- what the application knows ------------------------------------------------

    def set_cpu_utilization(self, value: float) -> None:
        """Report this instead of the measured CPU (a fraction of the CPUs available, may exceed 1)."""
        self._put("cpu_utilization", _check("cpu_utilization", value))

    def set_memory_utilization(self, value: float) -> None:
        self._put("mem_utilization", _check("mem_utilization", value, 1.0))

    def set_application_utilization(self, value: float) -> None:
        """The application's own utilization; weighted round robin prefers it to CPU."""
        self._put("application_utilization", _check("application_utilization", value))

    def set_qps(self, value: float) -> None:
        """Report this instead of the counted requests per second."""
        self._put("rps_fractional", _check("qps", value))

    def set_eps(self, value: float) -> None:
        """Report this instead of the counted errors per second."""
        self._put("eps", _check("eps", value))

    def set_named_metric(self, name: str, value: float) -> None:
        with self._lock:
            self._named[str(name)] = float(value)

    def set_utilization(self, name: str, value: float) -> None:
        """A named utilization (0..1), e.g. a connection pool's."""
        v = _check(f"utilization[{name!r}]", value, 1.0)
        with self._lock:
            self._utilization[str(name)] = v

    def clear(self, name: str) -> None:
        """Go back to the measured value for ``name`` (``cpu_utilization``, ``rps_fractional``, ``eps``),
        or drop a named metric or utilization."""
        with self._lock:
            self._set.pop(name, None)
            self._named.pop(name, None)
            self._utilization.pop(name, None)

    def _put(self, key: str, value: float) -> None:
        with self._lock:
            self._set[key] = value

    # -- what the interceptor counts --------------------------------------------------

    def record_call(self, failed: bool) -> None:
        """One RPC finished (``failed``: not OK). Called by :class:`OrcaInterceptor`."""
        with self._lock:
            self._calls += 1
            if failed:
                self._errors += 1

    def _measured(self) -> tuple[float, float, float]:
        # Caller holds the lock. Close the window once it is over; until then
        # the last window's rates stand (a report is never based on a sliver).
        now = self._clock()
        start, calls, errors, cpu = self._mark
        elapsed = now - start
        if elapsed >= self._window:
            cpu_now = self._cpu_time()
            self._rates = ((self._calls - calls) / elapsed, (self._errors - errors) / elapsed,
                           max(0.0, cpu_now - cpu) / elapsed / self._cpus)
            self._mark = (now, self._calls, self._errors, cpu_now)
        return self._rates

    def report(self) -> OrcaLoadReport:
        """The current report (a new message)."""
        with self._lock:
            qps, eps, cpu = self._measured()
            values = {"cpu_utilization": cpu, "rps_fractional": qps, "eps": eps, **self._set}
            r = OrcaLoadReport()
            for key, value in values.items():
                setattr(r, key, value)
            r.named_metrics.update(self._named)
            r.utilization.update(self._utilization)
        return r


# -- out of band: the OpenRcaService ----------------------------------------------------


def _interval(req: OrcaLoadReportRequest, minimum: float) -> float:
    d = req.report_interval
    asked = d.seconds + d.nanos / 1e9
    return max(asked, minimum)


def add_orca_service(server: grpc.Server, metrics: ServerMetrics, *, min_report_interval: float = 1.0) -> None:
    """Serve ``xds.service.orca.v3.OpenRcaService`` on ``server`` (call before ``server.start()``).

    Each ``StreamCoreMetrics`` stream gets a report at once and then every
    ``max(report_interval, min_report_interval)`` seconds until the client
    cancels or the server stops.
    """
    if not min_report_interval > 0:
        raise ValueError(f"min_report_interval must be > 0, got {min_report_interval!r}")

    def stream(request: OrcaLoadReportRequest, context: grpc.ServicerContext) -> Iterator[OrcaLoadReport]:
        interval = _interval(request, min_report_interval)
        ended = threading.Event()
        context.add_callback(ended.set)
        while context.is_active():
            yield metrics.report()
            if ended.wait(interval):
                return

    handler = grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "StreamCoreMetrics": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=OrcaLoadReportRequest.FromString,
            response_serializer=OrcaLoadReport.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler,))


# -- per call: the trailer ----------------------------------------------------------------


class _TrailerContext:
    """The handler's context, with its trailing metadata merged with the ORCA trailer."""

    def __init__(self, context: grpc.ServicerContext, trailer: tuple[str, bytes]) -> None:
        self._context = context
        self._trailer = trailer
        context.set_trailing_metadata((trailer,))

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._context.set_trailing_metadata((*tuple(trailing_metadata), self._trailer))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class OrcaInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # not generic at run time
    """Counts each RPC into ``metrics`` and sends the per-call report as ``endpoint-load-metrics-bin``.

    ``skip`` names full method paths not to count (the ORCA and health
    streams are never counted: they are not the server's work).
    """

    def __init__(self, metrics: ServerMetrics, *, skip: Sequence[str] = ()) -> None:
        self._metrics = metrics
        self._skip = frozenset(skip) | {OOB_METHOD, "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/Check"}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._skip:
            return handler
        metrics = self._metrics

        def trailer() -> tuple[str, bytes]:
            return (TRAILER_KEY, metrics.report().SerializeToString())

        def finish(context: grpc.ServicerContext, failed: bool) -> None:
            code = getattr(context, "code", lambda: None)()
            metrics.record_call(failed or (code is not None and code is not _OK))

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                failed = True
                try:
                    out = behaviour(request, _TrailerContext(context, trailer()))
                    failed = False
                    return out
                finally:
                    finish(context, failed)
            return run

        def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                failed = True
                try:
                    yield from behaviour(request, _TrailerContext(context, trailer()))
                    failed = False
                finally:
                    finish(context, failed)
            return run

        ser: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                               "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **ser)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **ser)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **ser)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **ser)
        return handler


# -- client side ---------------------------------------------------------------------------


def report_request(interval: float, cost_names: Sequence[str] = ()) -> bytes:
    """A serialized ``OrcaLoadReportRequest`` asking for a report every ``interval`` seconds."""
    req = OrcaLoadReportRequest(request_cost_names=list(cost_names))
    req.report_interval.seconds = int(interval)
    req.report_interval.nanos = round((interval - int(interval)) * 1e9)
    return req.SerializeToString()


def parse_report(data: bytes) -> OrcaLoadReport:
    """A serialized ``OrcaLoadReport`` (raises ``google.protobuf.message.DecodeError`` if it is not one)."""
    return OrcaLoadReport.FromString(data)


def report_values(report: OrcaLoadReport) -> Mapping[str, float]:
    """The scalar fields of ``report`` as a dict (for logs and tests)."""
    return {f.name: getattr(report, f.name) for f in report.DESCRIPTOR.fields if f.type == f.TYPE_DOUBLE}
