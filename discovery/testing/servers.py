"""Real grpc servers on loopback for tests: a tiny echo service plus the health service.

:class:`BackendServer` needs no generated code (bytes in, bytes out), so
plugin authors can use it in their own tests. Every response names the
backend that served it, which is what traffic-split tests count.

Methods (all under ``/discovery.testing.Echo/``):

- ``Unary``: returns the server's name (after :attr:`BackendServer.unary_gate`
  is set, which it is by default).
- ``ServerStream``: the request is a decimal count; streams that many replies,
  each waiting on :attr:`BackendServer.gate` first (set by default, so a test
  can hold a stream open by clearing it).
- ``ClientStream``: returns ``name:count`` of the requests received (after
  ``unary_gate``, like ``Unary``).
- ``Bidi``: answers each request with ``name:request`` at once (a test holds
  it open from its request iterator).

Knobs for failure and latency tests, all settable while the server runs:
``fail_with`` (every echo RPC fails with that code), :meth:`BackendServer.fail_next`
(the next N fail), ``delay`` (seconds before the first response of every echo
RPC, a slow backend; a call the client cancels or lets time out meanwhile ends
at once and is counted in ``cancelled``), ``trailing_metadata`` (sent with
every echo status) and ``pushback_ms`` (gRFC A6's ``grpc-retry-pushback-ms``
trailer on failures).

With ``orca`` (a :class:`discovery.orca.ServerMetrics`) the server also
serves ORCA load reports, out of band and per call.
"""

from __future__ import annotations

import collections
import selectors
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["SERVICE", "BackendServer", "EchoStub", "SilentServer", "static_target"]

SERVICE = "discovery.testing.Echo"
_HealthStatus = health_pb2.HealthCheckResponse


def _ident(b: bytes) -> bytes:
    return b


class BackendServer:
    """A grpc server on ``host:port`` (port 0 picks one) with echo and health services.

    ``fail_with`` makes every echo RPC fail with that status code; ``calls``
    counts echo RPCs by method; ``active`` counts echo RPCs being handled;
    ``cancelled`` counts those the client abandoned (cancelled, or deadline
    passed) while a gate or ``delay`` held them. :meth:`stop` and
    :meth:`start` can be repeated; a restart binds the same port. Thread-safe.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str | None = None,
                 max_workers: int = 16, with_health: bool = True,
                 credentials: grpc.ServerCredentials | None = None,
                 options: tuple[tuple[str, Any], ...] = (), *, orca: Any = None,
                 orca_min_interval: float = 1.0, delay: float = 0.0) -> None:
        self.host = host
        # grpc server arguments, e.g. the ping policy a keepalive test needs.
        self.options = tuple(options)
        self.port = port
        self._name = name
        self.max_workers = max_workers
        self.fail_with: grpc.StatusCode | None = None
        self._fail_next: list[grpc.StatusCode] = []
        # Sent as trailing metadata with every echo RPC's status.
        self.trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
        # Sent as the grpc-retry-pushback-ms trailer with every failure (any string, to test bad values).
        self.pushback_ms: int | str | None = None
        self.cancelled = 0
        self.with_health = with_health
        self.credentials = credentials
        # A discovery.orca.ServerMetrics: serve ORCA reports (out of band and per call) from it.
        self.orca = orca
        self.orca_min_interval = orca_min_interval
        # Seconds every echo RPC waits before its first response (a slow backend), on an
        # event, so a cancelled call ends at once.
        self.delay = delay
        self.last_metadata: tuple[tuple[str, Any], ...] = ()
        # Makes the health service's Watch fail with this status (a broken health endpoint).
        self.health_fails_with: grpc.StatusCode | None = None
        self.gate = threading.Event()
        self.gate.set()
        # Holds Unary calls while cleared, as gate holds stream messages.
        self.unary_gate = threading.Event()
        self.unary_gate.set()
        self.calls: collections.Counter[str] = collections.Counter()
        # Client addresses (ip:port) echo RPCs came from: one per connection.
        self.peers: set[str] = set()
        self.active = 0
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.health: health.HealthServicer | None = None

    @property
    def name(self) -> str:
        return self._name or self.addr

    @property
    def addr(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def fail_next(self, code: grpc.StatusCode, n: int = 1) -> None:
        """Fail the next ``n`` echo RPCs with ``code`` (before ``fail_with`` applies)."""
        with self._lock:
            self._fail_next.extend([code] * n)

    def _count(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            self.last_metadata = tuple(context.invocation_metadata())
            self.peers.add(context.peer())
            code = self._fail_next.pop(0) if self._fail_next else self.fail_with
        trailing = self.trailing_metadata
        if code is not None and self.pushback_ms is not None:
            trailing = (*trailing, ("grpc-retry-pushback-ms", str(self.pushback_ms)))
        if trailing:
            context.set_trailing_metadata(trailing)
        if code is not None:
            context.abort(code, f"{self.name} fails this RPC with {code.name}")

    def _abandoned(self) -> bool:
        with self._lock:
            self.cancelled += 1
        return True

    def _held(self, gate: threading.Event, context: grpc.ServicerContext) -> bool:
        """Wait for ``gate``; True if the client went away meanwhile."""
        while not gate.wait(0.05):
            if not context.is_active():
                return self._abandoned()
        return False

    def _delayed(self, context: grpc.ServicerContext) -> bool:
        """Wait ``delay`` seconds; True if the client went away meanwhile."""
        delay = self.delay
        if delay <= 0:
            return False
        ended = threading.Event()
        # The callback runs when the RPC terminates: while we hold it, only a
        # cancellation or the client's deadline can do that.
        if not context.add_callback(ended.set) or ended.wait(delay):
            return self._abandoned()
        return False

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        self._count(method, context)
        with self._lock:
            self.active += 1

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Unary", context)
        try:
            if not self._delayed(context):
                self._held(self.unary_gate, context)
            return self.name.encode()
        finally:
            self._leave()

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter("ServerStream", context)
        try:
            if self._delayed(context):
                return
            for _ in range(int(request or b"1")):
                if self._held(self.gate, context):
                    return
                yield self.name.encode()
        finally:
            self._leave()

    def _client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter("ClientStream", context)
        try:
            n = sum(1 for _ in requests)
            if not self._delayed(context):
                self._held(self.unary_gate, context)
            return f"{self.name}:{n}".encode()
        finally:
            self._leave()

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        # Not gated and not counted in ``active``: a test holds a bidi call open
        # from its own request iterator.
        self._count("Bidi", context)
        if self._delayed(context):
            return
        for r in requests:
            yield self.name.encode() + b":" + r

    def start(self) -> BackendServer:
        """Start (or restart on the same port). Returns self."""
        interceptors: list[Any] = []
        if self.orca is not None:
            from ..orca import OrcaInterceptor

            interceptors.append(OrcaInterceptor(self.orca))
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers), options=self.options,
                             interceptors=interceptors)
        if self.orca is not None:
            from ..orca import add_orca_service

            add_orca_service(server, self.orca, min_report_interval=self.orca_min_interval)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary, _ident, _ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream, _ident, _ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream, _ident, _ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi, _ident, _ident),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if self.with_health:
            # experimental_non_blocking=False: the default mode can deadlock
            # when set() races a closing Watch (grpc/grpc PR #43403).
            self.health = _Health(self)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.credentials is None:
            bound = server.add_insecure_port(self.addr)
        else:
            bound = server.add_secure_port(self.addr, self.credentials)
        if bound == 0:
            raise RuntimeError(f"cannot bind {self.host}:{self.port}")
        self.port = bound
        server.start()
        if self.health is not None:
            self.health.set("", _HealthStatus.SERVING)
            self.health.set(SERVICE, _HealthStatus.SERVING)
        self._server = server
        return self

    def set_health(self, status: Any, service: str = SERVICE) -> None:
        """Set the health status (a ``HealthCheckResponse.ServingStatus``) of ``service``."""
        assert self.health is not None
        self.health.set(service, status)

    def stop(self, grace: float | None = None) -> None:
        """Stop; with ``grace`` in-flight RPCs may finish. Blocks until stopped."""
        if self._server is not None:
            self._server.stop(grace).wait(10)
            self._server = None

    def __enter__(self) -> BackendServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Health(health.HealthServicer):
    def __init__(self, owner: BackendServer) -> None:
        super().__init__(experimental_non_blocking=False)
        self._owner = owner

    def Watch(self, request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> Any:
        code = self._owner.health_fails_with
        if code is not None:
            context.abort(code, "health endpoint broken on purpose")
        return super().Watch(request, context, *args, **kwargs)


class EchoStub:
    """Client-side multicallables for the echo service, on any grpc.Channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        p = f"/{SERVICE}/"
        self.Unary = channel.unary_unary(p + "Unary", _ident, _ident)
        self.ServerStream = channel.unary_stream(p + "ServerStream", _ident, _ident)
        self.ClientStream = channel.stream_unary(p + "ClientStream", _ident, _ident)
        self.Bidi = channel.stream_stream(p + "Bidi", _ident, _ident)


def static_target(servers: list[BackendServer]) -> str:
    """``static:///addr,addr`` for these servers."""
    return "static:///" + ",".join(s.addr for s in servers)


class SilentServer:
    """A loopback server that takes every request and never answers, on one port for TCP and UDP.

    It stands in for a registry whose long poll has no news, or a DNS server
    that is down without refusing: TCP connections are accepted and read, UDP
    datagrams received, nothing is ever sent back. ``received`` is set at the
    first bytes; ``data`` holds what each connection or datagram sent.
    ``connections`` counts accepted TCP connections. Use it to check that a
    resolver's ``close()`` returns at once while a request is pending.
    Thread-safe; a context manager.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.received = threading.Event()
        self.data: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._tcp, self._udp = self._bind(host)
        self.port: int = self._tcp.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name=f"silent-server {host}:{self.port}", daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(host: str) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(50):
            tcp = socket.create_server((host, 0), family=family)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind((host, tcp.getsockname()[1]))
            except OSError:  # that port is taken for UDP: try another
                tcp.close()
                udp.close()
                continue
            return tcp, udp
        raise RuntimeError(f"no port free for both TCP and UDP on {host}")

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _record(self, index: int | None, chunk: bytes) -> None:
        with self._lock:
            if index is None:
                self.data.append(chunk)
            else:
                self.data[index] += chunk
        self.received.set()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._tcp, selectors.EVENT_READ, "accept")
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._wake_r, selectors.EVENT_READ, "stop")
        conns: list[socket.socket] = []
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "accept":
                        conn, _ = self._tcp.accept()
                        conn.setblocking(False)
                        conns.append(conn)
                        with self._lock:
                            self.connections += 1
                            self.data.append(b"")
                            index = len(self.data) - 1
                        sel.register(conn, selectors.EVENT_READ, index)
                    elif key.data == "udp":
                        chunk, _ = self._udp.recvfrom(65535)
                        self._record(None, chunk)
                    else:
                        conn = key.fileobj  # type: ignore[assignment]
                        try:
                            chunk = conn.recv(65536)
                        except OSError:
                            chunk = b""
                        if chunk:
                            self._record(key.data, chunk)
                        else:  # the client went away
                            sel.unregister(conn)
        finally:
            sel.close()
            for conn in conns:
                conn.close()

    def stop(self) -> None:
        """Stop serving and close every socket (pending clients see the connection close)."""
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(5)
        for s in (self._tcp, self._udp, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
