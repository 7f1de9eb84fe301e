"""Keepalive detects a backend that keeps its connection open and answers nothing.

A real echo server sits behind :class:`discovery.testing.proxy.BlackholeProxy`;
``blackhole()`` freezes the connection both ways without closing it. grpcio
alone waits ``grpc.http2.ping_timeout_ms`` (60 s) for the ping's ack whatever
``grpc.keepalive_timeout_ms`` says; the channel derives that argument from the
user's keepalive options, so the backend leaves READY within about
keepalive time + keepalive timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

import discovery
from discovery.options import check_options
from discovery.testing import wait_ready
from discovery.testing.proxy import BlackholeProxy
from discovery.testing.servers import BackendServer, EchoStub

# A server that allows a client's pings every second, with or without calls
# (grpc's server defaults would answer them with GOAWAY "too_many_pings").
SERVER_OPTIONS = (("grpc.http2.min_ping_interval_without_data_ms", 100), ("grpc.http2.max_ping_strikes", 0),
                  ("grpc.keepalive_permit_without_calls", 1))
KEEPALIVE = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 500)]
# Well under grpcio's 60 s ping timeout, well over keepalive time + timeout (1.5 s).
DETECT_WITHIN = 15.0


@pytest.fixture
def proxied() -> Iterator[tuple[BackendServer, BlackholeProxy]]:
    server = BackendServer(options=SERVER_OPTIONS).start()
    proxy = BlackholeProxy(("127.0.0.1", server.port))
    yield server, proxy
    proxy.close()
    server.gate.set()
    server.stop()


def left_ready_within(channel: discovery.Channel, timeout: float) -> float | None:
    """Seconds until the channel's only backend leaves READY (event-driven), or None."""
    left = threading.Event()
    start = time.monotonic()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state is not grpc.ChannelConnectivity.READY:
            left.set()

    channel.subscribe(on_state)
    try:
        if not left.wait(timeout):
            return None
    finally:
        channel.unsubscribe(on_state)
    return time.monotonic() - start


def test_the_proxy_forwards_black_holes_and_restores() -> None:
    # A plain TCP echo server upstream shows the byte path exactly.
    echo = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with BlackholeProxy(("127.0.0.1", echo.getsockname()[1])) as p, \
            socket.create_connection(("127.0.0.1", p.port), timeout=5) as c:
        assert p.wait_connections(1)
        c.sendall(b"one")
        assert c.recv(16) == b"one"
        assert p.wait_writes(1)
        p.blackhole()
        c.sendall(b"two")
        c.settimeout(0.3)
        with pytest.raises(TimeoutError):
            c.recv(16)  # nothing comes back, and the connection stays open
        p.restore()
        c.settimeout(5)
        assert c.recv(16) == b"two"  # what was held is delivered
    t.join(5)
    echo.close()
    assert not t.is_alive()


def test_keepalive_options_derive_the_ping_timeout_for_backends() -> None:
    backend = dict(check_options(KEEPALIVE).for_backends())
    assert backend["grpc.http2.ping_timeout_ms"] == 500
    # grpc's default keepalive timeout (20 s) when only the time is given.
    assert dict(check_options([("grpc.keepalive_time_ms", 1000)]).for_backends())["grpc.http2.ping_timeout_ms"] == 20000
    # Idle pinging needs the pings-without-data limit lifted.
    idle = dict(check_options([*KEEPALIVE, ("grpc.keepalive_permit_without_calls", 1)]).for_backends())
    assert idle["grpc.http2.max_pings_without_data"] == 0
    # What the user set explicitly stays.
    own = dict(check_options([*KEEPALIVE, ("grpc.http2.ping_timeout_ms", 7000)]).for_backends())
    assert own["grpc.http2.ping_timeout_ms"] == 7000
    assert "grpc.http2.ping_timeout_ms" not in dict(check_options([]).for_backends())


@pytest.mark.integration
def test_a_black_holed_backend_with_a_call_in_flight_leaves_ready(proxied: tuple[BackendServer,
                                                                                  BlackholeProxy]) -> None:
    server, proxy = proxied
    with discovery.insecure_channel("static:///" + proxy.addr, options=KEEPALIVE) as ch:
        stub = EchoStub(ch)
        assert stub.Unary(b"", timeout=10) == server.name.encode()
        server.gate.clear()  # the stream's first message waits: a call stays in flight
        stream = stub.ServerStream(b"1", timeout=30)
        proxy.blackhole()
        took = left_ready_within(ch, DETECT_WITHIN)
        assert took is not None, f"still READY after {DETECT_WITHIN}s"
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.integration
def test_an_idle_black_holed_backend_leaves_ready_with_permit_without_calls(
        proxied: tuple[BackendServer, BlackholeProxy]) -> None:
    server, proxy = proxied
    options = [*KEEPALIVE, ("grpc.keepalive_permit_without_calls", 1)]
    with discovery.insecure_channel("static:///" + proxy.addr, options=options) as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == server.name.encode()
        wait_ready(ch, 1)
        # Stay idle for three more pings: grpcio alone stops pinging an idle
        # connection after two (grpc.http2.max_pings_without_data).
        sent = proxy.client_writes
        assert proxy.wait_writes(sent + 3, timeout=DETECT_WITHIN), "the client stopped pinging an idle backend"
        proxy.blackhole()
        took = left_ready_within(ch, DETECT_WITHIN)
        assert took is not None, f"still READY after {DETECT_WITHIN}s"
