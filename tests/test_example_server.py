"""Tests of the example OrderService server (examples/server.py), in-process and as a subprocess.

Every server binds 127.0.0.1 port 0. Nothing here sleeps to wait for
something: waits are on futures, events, queues and RPC deadlines.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import discovery

# The examples package lives at the repository root, which is on sys.path only
# when pytest runs as `python -m pytest`; this makes plain `pytest` work too.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.orders import SERVICE_NAME, pb2, pb2_grpc  # noqa: E402
from examples.server import (  # noqa: E402
    SERVED_BY_METADATA_KEY,
    OrderStore,
    ServedOrders,
    serve,
    shutdown,
)

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 10.0
READY_TIMEOUT = 5.0
PROCESS_TIMEOUT = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _item(sku: str = "sku-1", quantity: int = 1, price_cents: int = 100) -> pb2.OrderItem:
    return pb2.OrderItem(sku=sku, quantity=quantity, price_cents=price_cents)


def _create_request(user_id: str = "u1", *items: pb2.OrderItem, key: str = "") -> pb2.CreateOrderRequest:
    return pb2.CreateOrderRequest(user_id=user_id, items=list(items) or [_item()], idempotency_key=key)


def _served_by(call: Any) -> str | None:
    """Return the served-by trailing metadata of a finished call or RpcError."""
    return dict(call.trailing_metadata() or ()).get(SERVED_BY_METADATA_KEY)


def _ready_channel(address: str) -> grpc.Channel:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
    return channel


# --------------------------------------------------------------------------- in-process fixtures


@pytest.fixture
def served() -> Iterator[ServedOrders]:
    """An in-process server named b1 on a free loopback port."""
    orders = serve("127.0.0.1", 0, "b1")
    yield orders
    # grace=0 cancels whatever a failed test left open instead of waiting for it.
    shutdown(orders.server, orders.health, grace=0)


@pytest.fixture
def channel(served: ServedOrders) -> Iterator[grpc.Channel]:
    """A ready channel to the in-process server."""
    ch = _ready_channel(f"127.0.0.1:{served.port}")
    yield ch
    ch.close()


@pytest.fixture
def stub(channel: grpc.Channel) -> pb2_grpc.OrderServiceStub:
    """An OrderService stub on the in-process server."""
    return pb2_grpc.OrderServiceStub(channel)


class _RecordEvent(logging.Handler):
    """Sets an event when a log record's message starts with a given prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix = prefix
        self.event = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.prefix):
            self.messages.append(message)
            self.event.set()


# --------------------------------------------------------------------------- the four RPC shapes


def test_create_and_get_carry_served_by(served: ServedOrders, stub: pb2_grpc.OrderServiceStub) -> None:
    created, call = stub.CreateOrder.with_call(
        _create_request("u1", _item("a", 2, 150), _item("b", 1, 25)), timeout=RPC_TIMEOUT
    )
    assert created.served_by == "b1"
    assert _served_by(call) == "b1"
    order = created.order
    assert order.id == "b1-1"
    assert order.user_id == "u1"
    assert order.status == pb2.PENDING
    assert order.total_cents == 2 * 150 + 25
    assert order.created_at_unix_ms > 0
    assert [(i.sku, i.quantity, i.price_cents) for i in order.items] == [("a", 2, 150), ("b", 1, 25)]

    fetched = stub.GetOrder(pb2.GetOrderRequest(order_id=order.id), timeout=RPC_TIMEOUT)
    assert fetched.served_by == "b1"
    assert fetched.order == order
    assert served.servicer.calls("CreateOrder") == 1
    assert served.servicer.calls("GetOrder") == 1
    assert len(served.servicer.store) == 1


def test_get_unknown_order_is_not_found(stub: pb2_grpc.OrderServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.GetOrder(pb2.GetOrderRequest(order_id="nope"), timeout=RPC_TIMEOUT)
    assert failure.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nope" in (failure.value.details() or "")
    assert _served_by(failure.value) == "b1"


def test_idempotency_key_returns_the_first_order(stub: pb2_grpc.OrderServiceStub) -> None:
    first = stub.CreateOrder(_create_request(key="k1"), timeout=RPC_TIMEOUT)
    again = stub.CreateOrder(_create_request(key="k1"), timeout=RPC_TIMEOUT)
    other = stub.CreateOrder(_create_request(key="k2"), timeout=RPC_TIMEOUT)
    assert again.order == first.order
    assert other.order.id != first.order.id


def test_watch_order_streams_the_requested_number_of_updates(stub: pb2_grpc.OrderServiceStub) -> None:
    order = stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).order
    updates = list(
        stub.WatchOrder(
            pb2.WatchOrderRequest(order_id=order.id, updates=3, interval_ms=1), timeout=RPC_TIMEOUT
        )
    )
    assert [u.sequence for u in updates] == [1, 2, 3]
    assert {u.served_by for u in updates} == {"b1"}
    assert all(u.order == order for u in updates)

    # updates=0 means a single snapshot.
    single = list(stub.WatchOrder(pb2.WatchOrderRequest(order_id=order.id), timeout=RPC_TIMEOUT))
    assert [u.sequence for u in single] == [1]


def test_watch_order_advance_ends_at_delivered(stub: pb2_grpc.OrderServiceStub) -> None:
    order = stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).order
    request = pb2.WatchOrderRequest(order_id=order.id, updates=10, interval_ms=1, advance=True)
    statuses = [u.order.status for u in stub.WatchOrder(request, timeout=RPC_TIMEOUT)]
    assert statuses == [pb2.PENDING, pb2.PAID, pb2.SHIPPED, pb2.DELIVERED]
    stored = stub.GetOrder(pb2.GetOrderRequest(order_id=order.id), timeout=RPC_TIMEOUT).order
    assert stored.status == pb2.DELIVERED


def test_watch_order_of_unknown_order_is_not_found(stub: pb2_grpc.OrderServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.WatchOrder(pb2.WatchOrderRequest(order_id="nope"), timeout=RPC_TIMEOUT))
    assert failure.value.code() is grpc.StatusCode.NOT_FOUND


def test_cancelled_watch_ends_on_the_server_at_once(stub: pb2_grpc.OrderServiceStub) -> None:
    """A stream held open by a long interval_ms stops waiting as soon as the client cancels."""
    order = stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).order
    recorder = _RecordEvent("WatchOrder")
    logger = logging.getLogger("examples.server")
    logger.addHandler(recorder)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        stream = stub.WatchOrder(
            pb2.WatchOrderRequest(order_id=order.id, updates=100, interval_ms=60_000), timeout=120
        )
        assert next(stream).sequence == 1
        stream.cancel()
        # Without the cancellation callback the server would sit out the 60 s interval.
        assert recorder.event.wait(timeout=READY_TIMEOUT), "server did not end the cancelled WatchOrder"
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(previous_level)
    assert recorder.messages[0].startswith("WatchOrder CANCELLED")


def test_list_orders_streams_a_users_orders(stub: pb2_grpc.OrderServiceStub) -> None:
    ids = [stub.CreateOrder(_create_request("u1"), timeout=RPC_TIMEOUT).order.id for _ in range(3)]
    stub.CreateOrder(_create_request("u2"), timeout=RPC_TIMEOUT)
    listed = list(stub.ListOrders(pb2.ListOrdersRequest(user_id="u1"), timeout=RPC_TIMEOUT))
    assert [r.order.id for r in listed] == ids
    assert {r.served_by for r in listed} == {"b1"}

    limited = stub.ListOrders(pb2.ListOrdersRequest(user_id="u1", limit=2), timeout=RPC_TIMEOUT)
    assert [r.order.id for r in limited] == ids[:2]

    assert (
        list(stub.ListOrders(pb2.ListOrdersRequest(user_id="u1", status=pb2.PAID), timeout=RPC_TIMEOUT)) == []
    )
    # Advancing one order (PENDING -> PAID) makes it the only PAID one.
    list(
        stub.WatchOrder(pb2.WatchOrderRequest(order_id=ids[1], updates=2, advance=True), timeout=RPC_TIMEOUT)
    )
    paid = list(stub.ListOrders(pb2.ListOrdersRequest(user_id="u1", status=pb2.PAID), timeout=RPC_TIMEOUT))
    assert [r.order.id for r in paid] == [ids[1]]

    assert list(stub.ListOrders(pb2.ListOrdersRequest(user_id="nobody"), timeout=RPC_TIMEOUT)) == []


def test_batch_create_orders(served: ServedOrders, stub: pb2_grpc.OrderServiceStub) -> None:
    requests = [_create_request("u1", _item(f"sku-{n}", n + 1)) for n in range(4)]
    response = stub.BatchCreateOrders(iter(requests), timeout=RPC_TIMEOUT)
    assert response.served_by == "b1"
    assert response.created_count == 4
    assert list(response.order_ids) == ["b1-1", "b1-2", "b1-3", "b1-4"]
    listed = stub.ListOrders(pb2.ListOrdersRequest(user_id="u1"), timeout=RPC_TIMEOUT)
    assert [r.order.items[0].quantity for r in listed] == [1, 2, 3, 4]

    empty = stub.BatchCreateOrders(iter(()), timeout=RPC_TIMEOUT)
    assert empty.created_count == 0
    assert len(served.servicer.store) == 4


def test_batch_create_orders_is_all_or_nothing(served: ServedOrders, stub: pb2_grpc.OrderServiceStub) -> None:
    requests = [_create_request(), _create_request(), pb2.CreateOrderRequest(user_id="u1")]
    with pytest.raises(grpc.RpcError) as failure:
        stub.BatchCreateOrders(iter(requests), timeout=RPC_TIMEOUT)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == "request 2: items: an order needs at least one item"
    assert len(served.servicer.store) == 0


def test_process_orders_answers_each_request_in_lockstep(stub: pb2_grpc.OrderServiceStub) -> None:
    """Each response arrives before the next request is sent, so the RPC is truly bidirectional."""
    order = stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).order
    outbox: queue.Queue[pb2.ProcessOrdersRequest | None] = queue.Queue()

    def requests() -> Iterator[pb2.ProcessOrdersRequest]:
        while (request := outbox.get(timeout=RPC_TIMEOUT)) is not None:
            yield request

    responses = stub.ProcessOrders(requests(), timeout=RPC_TIMEOUT)
    outbox.put(pb2.ProcessOrdersRequest(request_id="r1"))
    echo = next(responses)
    assert (echo.request_id, echo.sequence, echo.applied, echo.served_by) == ("r1", 1, False, "b1")
    assert echo.status == pb2.ORDER_STATUS_UNSPECIFIED

    outbox.put(pb2.ProcessOrdersRequest(request_id="r2", order_id=order.id, new_status=pb2.SHIPPED))
    shipped = next(responses)
    assert (shipped.request_id, shipped.order_id, shipped.sequence) == ("r2", order.id, 2)
    assert shipped.applied
    assert shipped.status == pb2.SHIPPED

    outbox.put(pb2.ProcessOrdersRequest(request_id="r3", order_id="missing", new_status=pb2.PAID))
    missing = next(responses)
    assert (missing.sequence, missing.applied, missing.status) == (3, False, pb2.ORDER_STATUS_UNSPECIFIED)

    outbox.put(None)
    assert list(responses) == []
    assert responses.code() is grpc.StatusCode.OK
    assert _served_by(responses) == "b1"
    stored = stub.GetOrder(pb2.GetOrderRequest(order_id=order.id), timeout=RPC_TIMEOUT).order
    assert stored.status == pb2.SHIPPED


# --------------------------------------------------------------------------- validation


def _call(stub: pb2_grpc.OrderServiceStub, method: str, request: Any) -> None:
    """Call any OrderService method with one request message and consume the result."""
    rpc = getattr(stub, method)
    if method in ("BatchCreateOrders", "ProcessOrders"):
        result = rpc(iter([request]), timeout=RPC_TIMEOUT)
    else:
        result = rpc(request, timeout=RPC_TIMEOUT)
    if method in ("WatchOrder", "ListOrders", "ProcessOrders"):
        list(result)


# Proto3 enums are open: a peer can send a number the enum does not define.
_UNKNOWN_STATUS: Any = 99

INVALID_REQUESTS = [
    ("CreateOrder", pb2.CreateOrderRequest(items=[_item()]), "user_id: must not be empty"),
    ("CreateOrder", pb2.CreateOrderRequest(user_id="u1"), "items: an order needs at least one item"),
    ("CreateOrder", _create_request("u1", _item(quantity=0)), "items[0].quantity: must be positive, got 0"),
    (
        "CreateOrder",
        _create_request("u1", _item(), _item(quantity=-3)),
        "items[1].quantity: must be positive",
    ),
    ("CreateOrder", _create_request("u1", _item(sku="")), "items[0].sku: must not be empty"),
    (
        "CreateOrder",
        _create_request("u1", _item(price_cents=-1)),
        "items[0].price_cents: must not be negative",
    ),
    ("GetOrder", pb2.GetOrderRequest(), "order_id: must not be empty"),
    ("WatchOrder", pb2.WatchOrderRequest(), "order_id: must not be empty"),
    ("WatchOrder", pb2.WatchOrderRequest(order_id="o", updates=10_001), "updates: at most 10000"),
    ("WatchOrder", pb2.WatchOrderRequest(order_id="o", interval_ms=60_001), "interval_ms: at most 60000"),
    ("ListOrders", pb2.ListOrdersRequest(), "user_id: must not be empty"),
    (
        "ListOrders",
        pb2.ListOrdersRequest(user_id="u1", status=_UNKNOWN_STATUS),
        "status: unknown OrderStatus 99",
    ),
    ("BatchCreateOrders", pb2.CreateOrderRequest(items=[_item()]), "request 0: user_id: must not be empty"),
    ("ProcessOrders", pb2.ProcessOrdersRequest(new_status=pb2.PAID), "order_id: must not be empty"),
]


@pytest.mark.parametrize(
    ("method", "request_message", "expected"),
    INVALID_REQUESTS,
    ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(INVALID_REQUESTS)],
)
def test_invalid_requests_are_rejected(
    served: ServedOrders, stub: pb2_grpc.OrderServiceStub, method: str, request_message: Any, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        _call(stub, method, request_message)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (failure.value.details() or "")
    if method not in ("BatchCreateOrders", "ProcessOrders"):
        # Unary requests are rejected before the servicer runs; streamed ones
        # are checked as the servicer reads them.
        assert served.servicer.calls() == 0
    assert len(served.servicer.store) == 0


# --------------------------------------------------------------------------- health and fault injection


def test_health_reports_serving_and_can_be_flipped(served: ServedOrders, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert response.status == SERVING

    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT)
    assert next(watch).status == SERVING
    served.health.set(SERVICE_NAME, NOT_SERVING)
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    response = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT)
    assert response.status == NOT_SERVING


def test_fail_with_fails_every_rpc_shape_but_not_health(
    served: ServedOrders, stub: pb2_grpc.OrderServiceStub, channel: grpc.Channel
) -> None:
    order = stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).order
    served.servicer.fail_with = grpc.StatusCode.UNAVAILABLE
    valid_requests = [
        ("CreateOrder", _create_request()),
        ("GetOrder", pb2.GetOrderRequest(order_id=order.id)),
        ("WatchOrder", pb2.WatchOrderRequest(order_id=order.id)),
        ("ListOrders", pb2.ListOrdersRequest(user_id="u1")),
        ("BatchCreateOrders", _create_request()),
        ("ProcessOrders", pb2.ProcessOrdersRequest(request_id="r")),
    ]
    for method, request in valid_requests:
        with pytest.raises(grpc.RpcError) as failure:
            _call(stub, method, request)
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE, method
        assert failure.value.details() == served.servicer.fail_details
        assert _served_by(failure.value) == "b1", method
    assert len(served.servicer.store) == 1

    health = health_pb2_grpc.HealthStub(channel)
    check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT)
    assert check.status == SERVING

    served.servicer.fail_with = None
    assert stub.GetOrder(pb2.GetOrderRequest(order_id=order.id), timeout=RPC_TIMEOUT).served_by == "b1"


def test_fail_with_rejects_ok(served: ServedOrders) -> None:
    with pytest.raises(ValueError, match="not OK"):
        served.servicer.fail_with = grpc.StatusCode.OK


def test_servers_sharing_a_store_are_told_apart_by_served_by() -> None:
    store = OrderStore(id_prefix="shared")
    backends = [serve("127.0.0.1", 0, name, store=store) for name in ("b1", "b2")]
    channels = [_ready_channel(f"127.0.0.1:{b.port}") for b in backends]
    try:
        stubs = [pb2_grpc.OrderServiceStub(ch) for ch in channels]
        created = stubs[0].CreateOrder(_create_request(), timeout=RPC_TIMEOUT)
        fetched = stubs[1].GetOrder(pb2.GetOrderRequest(order_id=created.order.id), timeout=RPC_TIMEOUT)
        assert (created.served_by, fetched.served_by) == ("b1", "b2")
        assert created.order.id == "shared-1"
        assert fetched.order == created.order
    finally:
        for ch in channels:
            ch.close()
        for backend in backends:
            shutdown(backend.server, backend.health, grace=0)


def test_default_name_is_the_bound_address() -> None:
    backend = serve("127.0.0.1", 0)
    try:
        assert backend.servicer.name == f"127.0.0.1:{backend.port}"
    finally:
        shutdown(backend.server, backend.health, grace=0)


def test_in_process_shutdown_reports_not_serving_before_stopping(
    served: ServedOrders, channel: grpc.Channel
) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT
    )
    assert next(watch).status == SERVING
    stopper = threading.Thread(target=shutdown, args=(served.server, served.health), kwargs={"grace": 1.0})
    stopper.start()
    try:
        assert next(watch).status == NOT_SERVING
        # The server cancels the still-open Watch when the grace period ends.
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        stopper.join(timeout=PROCESS_TIMEOUT)
    assert not stopper.is_alive()


# --------------------------------------------------------------------------- subprocess


class ServerProcess:
    """A `python -m examples.server` child process and the address it printed."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / "server.stderr"
        self._stderr = self.stderr_path.open("wb")
        self._terminated = False
        # stderr goes to a file: a pipe nobody reads could fill up and block the server's logging.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.server", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        line = self._lines.get(timeout=PROCESS_TIMEOUT)
        if line is None or not line.startswith("LISTENING "):
            self.stop()
            pytest.fail(f"server did not print LISTENING (got {line!r}); stderr:\n{self.stderr()}")
        self.address = line.split(" ", 1)[1].strip()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr(self) -> str:
        """Return what the server has logged so far."""
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM, which starts the graceful shutdown."""
        self._terminated = True
        os.kill(self.process.pid, signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM the process unless already done, wait for it to exit, and return its exit status."""
        # A second SIGTERM would kill the server mid-shutdown, so send at most one.
        if not self._terminated and self.process.poll() is None:
            self.terminate()
        try:
            return self.process.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self._stderr.close()


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Any]:
    """Start server subprocesses; each is SIGTERMed at teardown and must then exit 0."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        directory = tmp_path / f"server{len(started)}"
        directory.mkdir()
        process = ServerProcess(directory, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        status = process.stop()
        assert status == 0, f"server exited with {status}; stderr:\n{process.stderr()}"


def test_subprocess_serves_all_rpc_shapes(start_process: Any) -> None:
    server = start_process("--name", "sub1", "--grace", "1")
    channel = _ready_channel(server.address)
    try:
        stub = pb2_grpc.OrderServiceStub(channel)
        order = stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT)
        assert (order.served_by, order.order.id) == ("sub1", "sub1-1")
        assert stub.GetOrder(pb2.GetOrderRequest(order_id="sub1-1"), timeout=RPC_TIMEOUT).served_by == "sub1"
        watched = stub.WatchOrder(pb2.WatchOrderRequest(order_id="sub1-1", updates=2), timeout=RPC_TIMEOUT)
        assert [(w.sequence, w.served_by) for w in watched] == [(1, "sub1"), (2, "sub1")]
        listed = stub.ListOrders(pb2.ListOrdersRequest(user_id="u1"), timeout=RPC_TIMEOUT)
        assert [r.served_by for r in listed] == ["sub1"]
        batch = stub.BatchCreateOrders(iter([_create_request(), _create_request()]), timeout=RPC_TIMEOUT)
        assert (batch.created_count, batch.served_by) == (2, "sub1")
        processed = stub.ProcessOrders(iter([pb2.ProcessOrdersRequest(request_id="r")]), timeout=RPC_TIMEOUT)
        assert [(p.request_id, p.served_by) for p in processed] == [("r", "sub1")]
        with pytest.raises(grpc.RpcError) as failure:
            stub.CreateOrder(pb2.CreateOrderRequest(user_id="u1"), timeout=RPC_TIMEOUT)
        assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT)
        assert check.status == SERVING
    finally:
        channel.close()
    # The logging interceptor wrote one line per RPC to stderr.
    assert "CreateOrder OK" in server.stderr()
    assert "CreateOrder INVALID_ARGUMENT" in server.stderr()


def test_subprocess_sigterm_reports_not_serving_then_exits_cleanly(start_process: Any) -> None:
    server = start_process("--name", "sub2", "--grace", "1")
    channel = _ready_channel(server.address)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=PROCESS_TIMEOUT
        )
        assert next(watch).status == SERVING
        server.terminate()
        # NOT_SERVING arrives on the still-open stream, before the server stops.
        assert next(watch).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        channel.close()
    assert server.stop() == 0
    log = server.stderr()
    assert "received SIGTERM" in log
    assert "sub2 stopped" in log


def test_subprocess_drain_keeps_serving_after_not_serving(start_process: Any) -> None:
    server = start_process("--name", "sub3", "--grace", "0", "--drain", "3")
    channel = _ready_channel(server.address)
    try:
        stub = pb2_grpc.OrderServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=PROCESS_TIMEOUT
        )
        assert next(watch).status == SERVING
        server.terminate()
        assert next(watch).status == NOT_SERVING
        # Still inside the 3 s drain: RPCs keep working while clients move away.
        assert stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).served_by == "sub3"
        watch.cancel()
    finally:
        channel.close()
    assert server.stop() == 0


def test_subprocess_fail_with(start_process: Any) -> None:
    server = start_process("--name", "bad", "--fail-with", "unavailable")
    channel = _ready_channel(server.address)
    try:
        stub = pb2_grpc.OrderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT)
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
        assert _served_by(failure.value) == "bad"
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_TIMEOUT)
        assert check.status == SERVING
    finally:
        channel.close()


def test_cli_rejects_fail_with_ok() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.server", "--port", "0", "--fail-with", "OK"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 2
    assert "OK is not a failure" in result.stderr


def test_order_servers_drive_weighted_round_robin_with_orca() -> None:
    from discovery import orca
    from discovery.balancers.weighted_round_robin import WeightedRoundRobinBuilder
    from discovery.testing import check_distribution, wait_for, wait_ready

    discovery.register_balancer(WeightedRoundRobinBuilder(), replace=True)
    backends = [serve("127.0.0.1", 0, name) for name in ("light", "busy")]
    for b, util in zip(backends, (0.2, 0.6), strict=True):
        assert b.servicer.load is not None
        b.servicer.load.set_qps(100)
        b.servicer.load.set_application_utilization(util)
    # Any gRPC client can read the report out of band.
    with grpc.insecure_channel(f"127.0.0.1:{backends[1].port}") as raw:
        report = orca.parse_report(next(raw.unary_stream(orca.OOB_METHOD)(orca.report_request(1), timeout=10)))
        assert (report.rps_fractional, report.application_utilization) == (100, pytest.approx(0.6))
    cfg = {"loadBalancingConfig": [{"weighted_round_robin": {
        "enableOobLoadReport": True, "oobReportingPeriod": "1s", "blackoutPeriod": "0s",
        "weightUpdatePeriod": "0.1s"}}]}
    target = "static:///" + ",".join(f"127.0.0.1:{b.port}" for b in backends)
    try:
        with discovery.insecure_channel(target, service_config=cfg) as ch:
            wait_ready(ch, 2)
            wait_for(lambda: type(ch._core.picker).__name__ == "EdfPicker", 10, message="ORCA weights in use")
            stub = pb2_grpc.OrderServiceStub(ch)
            served = [stub.CreateOrder(_create_request(), timeout=RPC_TIMEOUT).served_by for _ in range(400)]
        check_distribution([served.count("light"), served.count("busy")], [3, 1])  # 100/0.2 : 100/0.6
    finally:
        for backend in backends:
            shutdown(backend.server, backend.health, grace=0)
        discovery.unregister_balancer("weighted_round_robin")
