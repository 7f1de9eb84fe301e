"""Helpers for the DNS plugin's tests and bench: loopback grpc backends, polling."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

CHECK = "/grpc.health.v1.Health/Check"
#: Metadata key a caller may set to have its calls counted separately.
CLIENT_KEY = "x-test-client"

#: ``make_resolver(target, builder=None, **config) -> (DnsResolver, RecordingListener)``
MakeResolver = Callable[..., tuple[Any, Any]]


def poll_until(cond: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Re-check ``cond`` until it holds or ``timeout`` (real seconds) passes."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)


class _CountChecks(grpc.ServerInterceptor):
    def __init__(
        self, host: str, counts: Counter[str], by_client: Counter[tuple[str, str]], lock: threading.Lock
    ) -> None:
        self._host = host
        self._counts = counts
        self._by_client = by_client
        self._lock = lock

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method == CHECK:
            client = dict(handler_call_details.invocation_metadata or ()).get(CLIENT_KEY, "")
            with self._lock:
                self._counts[self._host] += 1
                self._by_client[(self._host, str(client))] += 1
        return continuation(handler_call_details)


class Backends:
    """Real grpc servers with the health service on 127.0.0.N, all on one port.

    DNS A records carry no port, so every backend of a name listens on the
    same port at a different loopback address. ``counts[host]`` is how many
    ``Health/Check`` calls each one served.
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.by_client: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._servers: dict[str, grpc.Server] = {}
        hosts = list(hosts)
        for _ in range(5):
            try:
                for h in hosts:
                    self.add(h)
                return
            except RuntimeError:
                self.stop()
                self.port = 0
        raise RuntimeError(f"could not bind one port on all of {hosts}")

    def add(self, host: str) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[_CountChecks(host, self.counts, self.by_client, self._lock)],
            options=[("grpc.so_reuseport", 0)],
        )
        # The default non-blocking mode can deadlock (grpc/grpc#43403).
        servicer = health.HealthServicer(experimental_non_blocking=False)
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        bound = server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0 or (self.port and bound != self.port):
            raise RuntimeError(f"cannot bind {host}:{self.port}")
        self.port = bound
        server.start()
        self._servers[host] = server

    def count(self, host: str, client: str | None = None) -> int:
        """Checks ``host`` served (only those tagged ``client``, if given)."""
        with self._lock:
            return self.counts[host] if client is None else self.by_client[(host, client)]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop(None)
        self._servers.clear()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def health_check(
    channel: grpc.Channel, timeout: float = 2.0, wait_for_ready: bool = False, client: str | None = None
) -> Any:
    """One ``Health/Check`` RPC, the test's unit of traffic (tagged ``client`` if given)."""
    call = channel.unary_unary(
        CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    metadata = None if client is None else ((CLIENT_KEY, client),)
    return call(health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=wait_for_ready, metadata=metadata)
