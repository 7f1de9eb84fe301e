"""An example OrderService backend: the server that examples, tests and benchmarks run.

Run it as a process::

    python -m examples.server --host 127.0.0.1 --port 0 --name b1 [--grace 5] [--fail-with UNAVAILABLE] \
        [--metrics-port 9464]

Once it accepts RPCs it prints exactly one line, ``LISTENING host:port``, to
stdout and flushes it, so a parent process can wait for that line and read the
bound port (``--port 0`` picks a free one). Logs go to stderr. On SIGTERM or
SIGINT it reports NOT_SERVING through the health service, optionally keeps
serving for ``--drain`` seconds so that health-checking clients move away,
then stops with ``--grace`` seconds for in-flight RPCs, and exits 0. A second
signal during that shutdown kills the process at once.

Or in-process, as tests do::

    served = serve("127.0.0.1", 0, "b1")
    served.servicer.fail_with = grpc.StatusCode.UNAVAILABLE   # every OrderService RPC fails
    served.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    shutdown(served.server, served.health, grace=1)

Every response carries ``served_by`` (the server's name) and every
OrderService RPC, failed or not, carries a ``served-by`` trailing metadata
entry, so a client can tell which backend answered.

The server reports its load with ORCA (:mod:`discovery.orca`): the
``xds.service.orca.v3.OpenRcaService`` out of band, which
``weighted_round_robin`` with ``enableOobLoadReport`` reads, and the
``endpoint-load-metrics-bin`` trailer on every call, for other gRPC clients.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from discovery import orca
from examples.orders import SERVICE_NAME, pb2, pb2_grpc

__all__ = [
    "MAX_INTERVAL_MS",
    "MAX_UPDATES",
    "SERVED_BY_METADATA_KEY",
    "LoggingInterceptor",
    "OrderServicer",
    "OrderStore",
    "ServedOrders",
    "ValidationInterceptor",
    "main",
    "serve",
    "shutdown",
    "validate_request",
]

_LOGGER = logging.getLogger("examples.server")

SERVED_BY_METADATA_KEY = "served-by"
"""Trailing-metadata key that carries the server's name on every OrderService RPC."""
MAX_UPDATES = 10_000
"""Upper bound of ``WatchOrderRequest.updates``; keeps every watch stream bounded."""
MAX_INTERVAL_MS = 60_000
"""Upper bound of ``WatchOrderRequest.interval_ms``."""

_METHOD_PREFIX = f"/{SERVICE_NAME}/"
_FINAL_STATUSES = frozenset({pb2.DELIVERED, pb2.CANCELLED})
_NEXT_STATUS = {
    pb2.ORDER_STATUS_UNSPECIFIED: pb2.PENDING,
    pb2.PENDING: pb2.PAID,
    pb2.PAID: pb2.SHIPPED,
    pb2.SHIPPED: pb2.DELIVERED,
}


def _join_host_port(host: str, port: int) -> str:
    """Format an address the way grpc expects it, bracketing IPv6 literals."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _copy_order(order: pb2.Order) -> pb2.Order:
    """Return a detached copy, so that callers never share a message the store mutates."""
    copy = pb2.Order()
    copy.CopyFrom(order)
    return copy


class OrderStore:
    """A thread-safe in-memory order store.

    Every method returns copies of the stored messages. Ids are
    ``"<id_prefix>-<n>"`` with ``n`` counting from 1, so they are predictable in
    tests and distinct between stores with different prefixes. One store can be
    shared by several servers to model backends in front of one database.
    """

    def __init__(self, id_prefix: str = "ord", clock: Callable[[], float] = time.time) -> None:
        """Create an empty store; ``clock`` returns Unix seconds for ``created_at_unix_ms``."""
        self._id_prefix = id_prefix
        self._clock = clock
        self._lock = threading.Lock()
        self._orders: dict[str, pb2.Order] = {}  # insertion-ordered, which ListOrders relies on
        self._by_idempotency_key: dict[str, str] = {}
        self._next_id = 1

    def __len__(self) -> int:
        """Return the number of stored orders."""
        with self._lock:
            return len(self._orders)

    def _create_locked(self, request: pb2.CreateOrderRequest) -> pb2.Order:
        if request.idempotency_key:
            existing = self._by_idempotency_key.get(request.idempotency_key)
            if existing is not None:
                return self._orders[existing]
        order = pb2.Order(
            id=f"{self._id_prefix}-{self._next_id}",
            user_id=request.user_id,
            items=request.items,
            status=pb2.PENDING,
            total_cents=sum(item.quantity * item.price_cents for item in request.items),
            created_at_unix_ms=int(self._clock() * 1000),
        )
        self._next_id += 1
        self._orders[order.id] = order
        if request.idempotency_key:
            self._by_idempotency_key[request.idempotency_key] = order.id
        return order

    def create(self, request: pb2.CreateOrderRequest) -> pb2.Order:
        """Store a new PENDING order built from a (validated) request and return it.

        A request whose ``idempotency_key`` was seen before returns the order
        created by that earlier request instead.
        """
        with self._lock:
            return _copy_order(self._create_locked(request))

    def create_many(self, requests: Iterable[pb2.CreateOrderRequest]) -> list[pb2.Order]:
        """Store one order per request under a single lock acquisition, in order."""
        with self._lock:
            return [_copy_order(self._create_locked(request)) for request in requests]

    def get(self, order_id: str) -> pb2.Order | None:
        """Return the order with this id, or None."""
        with self._lock:
            order = self._orders.get(order_id)
            return None if order is None else _copy_order(order)

    def list(
        self, user_id: str, status: int = pb2.ORDER_STATUS_UNSPECIFIED, limit: int = 0
    ) -> list[pb2.Order]:
        """Return a user's orders in creation order, optionally filtered by status and limited."""
        with self._lock:
            found = [
                _copy_order(order)
                for order in self._orders.values()
                if order.user_id == user_id and status in (pb2.ORDER_STATUS_UNSPECIFIED, order.status)
            ]
        return found[:limit] if limit else found

    def set_status(self, order_id: str, status: int) -> pb2.Order | None:
        """Move an order to ``status`` (no transition rules) and return it, or None if absent."""
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                return None
            order.status = status  # type: ignore[assignment]
            return _copy_order(order)

    def advance(self, order_id: str) -> pb2.Order | None:
        """Move an order one step along PENDING -> PAID -> SHIPPED -> DELIVERED.

        DELIVERED and CANCELLED orders stay as they are. Returns the order, or
        None if absent.
        """
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                return None
            order.status = _NEXT_STATUS.get(order.status, order.status)
            return _copy_order(order)


def _validate_status(value: int, field: str) -> str | None:
    if value not in pb2.OrderStatus.values():
        return f"{field}: unknown OrderStatus {value}"
    return None


def validate_request(message: Any) -> str | None:
    """Return why an OrderService request message is invalid, or None if it is valid.

    Messages of other types are always valid. The messages name the offending
    field so that a client's error says what to fix.
    """
    if isinstance(message, pb2.CreateOrderRequest):
        if not message.user_id:
            return "user_id: must not be empty"
        if not message.items:
            return "items: an order needs at least one item"
        for index, item in enumerate(message.items):
            if not item.sku:
                return f"items[{index}].sku: must not be empty"
            if item.quantity <= 0:
                return f"items[{index}].quantity: must be positive, got {item.quantity}"
            if item.price_cents < 0:
                return f"items[{index}].price_cents: must not be negative, got {item.price_cents}"
        return None
    if isinstance(message, pb2.GetOrderRequest):
        return None if message.order_id else "order_id: must not be empty"
    if isinstance(message, pb2.WatchOrderRequest):
        if not message.order_id:
            return "order_id: must not be empty"
        if message.updates > MAX_UPDATES:
            return f"updates: at most {MAX_UPDATES}, got {message.updates}"
        if message.interval_ms > MAX_INTERVAL_MS:
            return f"interval_ms: at most {MAX_INTERVAL_MS}, got {message.interval_ms}"
        return None
    if isinstance(message, pb2.ListOrdersRequest):
        if not message.user_id:
            return "user_id: must not be empty"
        return _validate_status(message.status, "status")
    if isinstance(message, pb2.ProcessOrdersRequest):
        if message.new_status != pb2.ORDER_STATUS_UNSPECIFIED and not message.order_id:
            return "order_id: must not be empty when new_status is set"
        return _validate_status(message.new_status, "new_status")
    return None


# A function that takes a handler's behaviour and whether its request and
# response are streams, and returns a replacement behaviour.
_BehaviourWrapper = Callable[[Callable[..., Any], bool, bool], Callable[..., Any]]


def _rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], wrap: _BehaviourWrapper
) -> grpc.RpcMethodHandler[Any, Any]:
    """Return a copy of ``handler`` whose behaviour is ``wrap``-ped, keeping its (de)serialisers."""
    streams = (handler.request_streaming, handler.response_streaming)
    serialisers: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, *streams), **serialisers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, *streams), **serialisers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, *streams), **serialisers)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, *streams), **serialisers)


class LoggingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # not generic at run time
    """Log one line per finished OrderService RPC: method, status code, duration and peer.

    Other services (health checks in particular) pass through untouched: their
    long-lived Watch streams would only add noise, and wrapping a behaviour
    would hide the ``experimental_non_blocking`` marker grpc looks for on it.
    """

    def __init__(self, logger: logging.Logger = _LOGGER, level: int = logging.INFO,
                 on_done: Callable[[str, str, float], None] | None = None) -> None:
        """Log through ``logger`` at ``level``; also call ``on_done(method, code, seconds)`` if given."""
        self._logger = logger
        self._level = level
        self._on_done = on_done

    def _log(self, method: str, context: grpc.ServicerContext, started: float, outcome: str) -> None:
        # ServicerContext.code() exists since grpcio 1.38 but grpc-stubs does not declare it.
        code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]
        name = code.name if code is not None else outcome
        elapsed = time.perf_counter() - started
        self._logger.log(self._level, "%s %s %.1fms peer=%s", method, name, elapsed * 1000, context.peer())
        if self._on_done is not None:
            self._on_done(method, name, elapsed)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap OrderService handlers so that each RPC is logged when it ends."""
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(_METHOD_PREFIX):
            return handler
        short = method.removeprefix(_METHOD_PREFIX)

        def wrap(behaviour: Callable[..., Any], _request_streaming: bool, response_streaming: bool) -> Any:
            if response_streaming:

                def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    started = time.perf_counter()
                    # Until the generator finishes, the outcome is "the client went away".
                    outcome = "CANCELLED"
                    try:
                        yield from behaviour(request, context)
                        # A servicer may return quietly once the RPC has ended
                        # (as WatchOrder does); the client then never saw OK.
                        outcome = "OK" if context.is_active() else "CANCELLED"
                    except Exception:
                        outcome = "UNKNOWN"
                        raise
                    finally:
                        self._log(short, context, started, outcome)

                return streaming

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    response = behaviour(request, context)
                except Exception:
                    self._log(short, context, started, "UNKNOWN")
                    raise
                self._log(short, context, started, "OK")
                return response

            return unary

        return _rewrap_handler(handler, wrap)


class ValidationInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # not generic at run time
    """Reject invalid OrderService requests with INVALID_ARGUMENT before the servicer runs.

    The interceptor wraps the handler's behaviour, which is where the
    deserialised request is visible. For client streams each message is
    checked as the servicer reads it; the error names the message's 0-based
    position in the stream.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap OrderService handlers with request validation."""
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_METHOD_PREFIX):
            return handler

        def wrap(behaviour: Callable[..., Any], request_streaming: bool, _response_streaming: bool) -> Any:
            if request_streaming:

                def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                    for index, message in enumerate(requests):
                        error = validate_request(message)
                        if error is not None:
                            # abort() raises inside the servicer's loop over the
                            # requests, which ends the RPC with this status.
                            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {index}: {error}")
                        yield message

                def streaming_request(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                    return behaviour(checked(requests, context), context)

                return streaming_request

            def unary_request(request: Any, context: grpc.ServicerContext) -> Any:
                error = validate_request(request)
                if error is not None:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
                return behaviour(request, context)

            return unary_request

        return _rewrap_handler(handler, wrap)


class OrderServicer(pb2_grpc.OrderServiceServicer):
    """The OrderService implementation; every response carries ``served_by=name``.

    Attributes tests may change while the server runs:

    - ``fail_with``: when not None, every OrderService RPC that passes
      validation fails with this status (health checks are unaffected), so
      a backend can look healthy yet fail all traffic, as outlier detection
      expects.
    - ``fail_details``: the status message of those failures.
    - ``load``: the :class:`discovery.orca.ServerMetrics` this server reports
      (set by :func:`serve`); e.g. ``load.set_application_utilization(0.8)``.
    """

    def __init__(self, name: str, store: OrderStore | None = None) -> None:
        """Serve under ``name`` from ``store`` (a fresh store whose ids start with ``name``)."""
        self.name = name
        self.store = store if store is not None else OrderStore(id_prefix=name)
        self.fail_details = f"{name}: failing every RPC on purpose"
        self._fail_with: grpc.StatusCode | None = None
        self._calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self.load: orca.ServerMetrics | None = None

    @property
    def fail_with(self) -> grpc.StatusCode | None:
        """The status every RPC fails with, or None to serve normally."""
        return self._fail_with

    @fail_with.setter
    def fail_with(self, code: grpc.StatusCode | None) -> None:
        # grpc turns abort(OK) into UNKNOWN, which would surprise the caller.
        if code is grpc.StatusCode.OK:
            raise ValueError("fail_with must be an error status or None, not OK")
        self._fail_with = code

    def calls(self, method: str | None = None) -> int:
        """Return how many RPCs of ``method`` (e.g. "CreateOrder"), or of all methods, reached the servicer.

        Counted before ``fail_with`` applies, so failed RPCs count too;
        requests rejected by validation never reach the servicer.
        """
        with self._calls_lock:
            return self._calls[method] if method is not None else sum(self._calls.values())

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        """Count the call, tag it with served-by, and fail it if ``fail_with`` is set."""
        with self._calls_lock:
            self._calls[method] += 1
        context.set_trailing_metadata(((SERVED_BY_METADATA_KEY, self.name),))
        code = self._fail_with
        if code is not None:
            context.abort(code, self.fail_details)

    def CreateOrder(
        self, request: pb2.CreateOrderRequest, context: grpc.ServicerContext
    ) -> pb2.CreateOrderResponse:
        """Store a new PENDING order."""
        self._enter("CreateOrder", context)
        return pb2.CreateOrderResponse(order=self.store.create(request), served_by=self.name)

    def GetOrder(self, request: pb2.GetOrderRequest, context: grpc.ServicerContext) -> pb2.GetOrderResponse:
        """Return a stored order or fail with NOT_FOUND."""
        self._enter("GetOrder", context)
        order = self.store.get(request.order_id)
        if order is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"order {request.order_id!r} not found on {self.name}")
        return pb2.GetOrderResponse(order=order, served_by=self.name)

    def WatchOrder(
        self, request: pb2.WatchOrderRequest, context: grpc.ServicerContext
    ) -> Iterator[pb2.WatchOrderResponse]:
        """Stream ``max(updates, 1)`` snapshots of an order, ``interval_ms`` apart.

        With ``advance`` each snapshot after the first moves the order one
        lifecycle step, and the stream ends once a final status was sent. The
        stream also ends, without error, when the RPC ends early (client
        cancel, deadline, server stop).
        """
        self._enter("WatchOrder", context)
        order = self.store.get(request.order_id)
        if order is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"order {request.order_id!r} not found on {self.name}")
        # Set by grpc when the RPC terminates for any reason, so the wait
        # between updates ends at once instead of holding a worker thread.
        ended = threading.Event()
        context.add_callback(ended.set)
        interval = request.interval_ms / 1000
        for sequence in range(1, max(request.updates, 1) + 1):
            if sequence > 1:
                if ended.wait(interval) or not context.is_active():
                    return
                fetch = self.store.advance if request.advance else self.store.get
                order = fetch(request.order_id)
                if order is None:  # Only possible if a shared store's owner removed it.
                    context.abort(grpc.StatusCode.NOT_FOUND, f"order {request.order_id!r} disappeared")
            yield pb2.WatchOrderResponse(order=order, sequence=sequence, served_by=self.name)
            if request.advance and order.status in _FINAL_STATUSES:
                return

    def ListOrders(
        self, request: pb2.ListOrdersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb2.ListOrdersResponse]:
        """Stream a user's orders in creation order."""
        self._enter("ListOrders", context)
        for order in self.store.list(request.user_id, request.status, request.limit):
            yield pb2.ListOrdersResponse(order=order, served_by=self.name)

    def BatchCreateOrders(
        self, request_iterator: Iterator[pb2.CreateOrderRequest], context: grpc.ServicerContext
    ) -> pb2.BatchCreateOrdersResponse:
        """Create one order per streamed request, all or none."""
        self._enter("BatchCreateOrders", context)
        # Reading the whole stream first means a request rejected by validation
        # aborts the RPC before anything is stored.
        requests = list(request_iterator)
        orders = self.store.create_many(requests)
        return pb2.BatchCreateOrdersResponse(
            created_count=len(orders), order_ids=[order.id for order in orders], served_by=self.name
        )

    def ProcessOrders(
        self, request_iterator: Iterator[pb2.ProcessOrdersRequest], context: grpc.ServicerContext
    ) -> Iterator[pb2.ProcessOrdersResponse]:
        """Answer each request in order: an echo, or a status change of a stored order."""
        self._enter("ProcessOrders", context)
        for sequence, request in enumerate(request_iterator, start=1):
            status, applied = pb2.ORDER_STATUS_UNSPECIFIED, False
            if request.new_status != pb2.ORDER_STATUS_UNSPECIFIED:
                order = self.store.set_status(request.order_id, request.new_status)
                if order is not None:
                    status, applied = order.status, True
            yield pb2.ProcessOrdersResponse(
                request_id=request.request_id,
                order_id=request.order_id,
                status=status,
                applied=applied,
                sequence=sequence,
                served_by=self.name,
            )


class ServedOrders(NamedTuple):
    """What :func:`serve` returns; unpacks as ``server, port, health, servicer``."""

    server: grpc.Server
    """The started server."""
    port: int
    """The bound port (the real one when 0 was asked for)."""
    health: health.HealthServicer
    """The health service, SERVING for "" and ``SERVICE_NAME``; tests may ``set()`` other statuses."""
    servicer: OrderServicer
    """The OrderService; its ``store``, ``fail_with`` and ``calls()`` are for tests."""


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
    *,
    store: OrderStore | None = None,
    fail_with: grpc.StatusCode | None = None,
    max_workers: int = 16,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    on_rpc_done: Callable[[str, str, float], None] | None = None,
) -> ServedOrders:
    """Start an OrderService server with health checking and return its parts.

    Args:
        host: address to bind; keep it on loopback in tests.
        port: port to bind; 0 picks a free one, returned as ``ServedOrders.port``.
        name: the ``served_by`` value; defaults to the bound ``host:port``.
        store: an order store to share between servers; defaults to a fresh one.
        fail_with: initial value of ``servicer.fail_with``.
        max_workers: size of the thread pool. Each open stream (health Watch
            included) holds one worker thread for its whole life.
        interceptors: extra server interceptors, run inside the logging and
            validation interceptors.
        options: grpc server channel arguments.
        on_rpc_done: called as ``(method, code name, seconds)`` when an
            OrderService RPC ends (what ``--metrics-port`` counts).

    Raises:
        RuntimeError: the address could not be bound.
    """
    # ORCA load reports (discovery.orca): counted per call, served out of band
    # for weighted_round_robin clients, and as the per-call trailer for other
    # gRPC clients. Each open report stream holds a worker thread.
    load = orca.ServerMetrics()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="orders"),
        interceptors=[orca.OrcaInterceptor(load), LoggingInterceptor(on_done=on_rpc_done), ValidationInterceptor(),
                      *(interceptors or ())],
        options=list(options or ()),
    )
    orca.add_orca_service(server, load)
    bound = server.add_insecure_port(_join_host_port(host, port))
    if bound == 0:  # Older grpcio reports a failed bind by returning 0 instead of raising.
        raise RuntimeError(f"could not bind {_join_host_port(host, port)}")
    servicer = OrderServicer(name or _join_host_port(host, bound), store)
    servicer.fail_with = fail_with
    servicer.load = load
    pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
    # The default non-blocking mode can deadlock when set() races a closing
    # Watch in grpcio 1.85 (grpc/grpc PR #43403); blocking mode costs one
    # worker thread per open Watch instead.
    health_servicer = health.HealthServicer(experimental_non_blocking=False)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.start()
    return ServedOrders(server, bound, health_servicer, servicer)


def shutdown(
    server: grpc.Server, health_servicer: health.HealthServicer, grace: float | None = 5.0, drain: float = 0.0
) -> None:
    """Stop gracefully: report NOT_SERVING, serve on for ``drain`` seconds, then stop with ``grace``.

    Health Watch streams receive NOT_SERVING before the server stops taking
    RPCs, so health-checking clients stop picking this backend first. Open
    streams (health Watches included) count as in flight, so the stop can take
    the whole grace period. Returns once the server has stopped.
    """
    health_servicer.enter_graceful_shutdown()
    if drain > 0:
        time.sleep(drain)
    server.stop(grace).wait()


def _status_code(name: str) -> grpc.StatusCode:
    try:
        code = grpc.StatusCode[name.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown status code {name!r}") from None
    if code is grpc.StatusCode.OK:
        raise argparse.ArgumentTypeError("OK is not a failure")
    return code


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.server", description="Example OrderService server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=50051, help="port to bind; 0 picks a free one (default 50051)"
    )
    parser.add_argument("--name", help="served_by value (default: the bound host:port)")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds in-flight RPCs get on shutdown (default 5)"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="seconds to keep serving after reporting NOT_SERVING, before stopping (default 0)",
    )
    parser.add_argument(
        "--fail-with",
        type=_status_code,
        metavar="CODE",
        help="fail every OrderService RPC with this status, e.g. UNAVAILABLE",
    )
    parser.add_argument("--max-workers", type=int, default=16, help="server thread pool size (default 16)")
    parser.add_argument("--log-level", default="INFO", help="logging level for stderr (default INFO)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port; needs prometheus_client)",
    )
    return parser.parse_args(argv)


def _start_metrics(host: str, port: int) -> Callable[[str, str, float], None]:
    """Serve ``/metrics`` on ``host:port``; return the per-RPC callback that feeds it."""
    from prometheus_client import Counter, Histogram, start_http_server

    rpcs = Counter("orders_server_rpcs", "OrderService RPCs served, by method and status code",
                   ("method", "code"))
    seconds = Histogram("orders_server_rpc_duration_seconds", "OrderService RPC handling time", ("method",))
    httpd, _thread = start_http_server(port, addr=host)
    _LOGGER.info("metrics on http://%s/metrics", _join_host_port(host, httpd.server_port))

    def on_done(method: str, code: str, elapsed: float) -> None:
        rpcs.labels(method, code).inc()
        seconds.labels(method).observe(elapsed)

    return on_done


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # The signal handler only writes to a pipe that the main thread blocks on.
    # Setting a threading.Event from a handler can deadlock when the signal
    # lands while the main thread holds that Event's internal lock.
    wake_read, wake_write = os.pipe()

    def on_signal(signum: int, _frame: object) -> None:
        os.write(wake_write, bytes([signum]))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    on_done = None if args.metrics_port is None else _start_metrics(args.host, args.metrics_port)
    served = serve(args.host, args.port, args.name, fail_with=args.fail_with, max_workers=args.max_workers,
                   on_rpc_done=on_done)
    address = _join_host_port(args.host, served.port)
    _LOGGER.info("%s serving OrderService on %s", served.servicer.name, address)
    print(f"LISTENING {address}", flush=True)

    signum = os.read(wake_read, 1)[0]
    # A second signal during the shutdown below should end the process now.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _LOGGER.info(
        "%s received %s: NOT_SERVING, drain %.1fs, grace %.1fs",
        served.servicer.name,
        signal.Signals(signum).name,
        args.drain,
        args.grace,
    )
    shutdown(served.server, served.health, grace=args.grace, drain=args.drain)
    _LOGGER.info("%s stopped", served.servicer.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
