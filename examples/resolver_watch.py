"""A resolver plugin on WatchResolver: an HTTP long poll (README "Writing a resolver plugin").

    python -m examples.resolver_watch

``registry://HOST:PORT/orders`` asks ``GET /services/orders?index=N``, which
the registry answers when its set changes past version N (Consul's blocking
queries work this way). The plugin writes one watch loop; the helper owns
the thread, the reconnect backoff, de-duplication and a ``close()`` that
aborts the pending GET at once. The example starts a tiny registry of its own.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import discovery
from discovery import Address, ResolverError, ResolverState
from discovery.resolver import (
    ResolverBuilder,
    ResolverListener,
    ResolverOptions,
    WatchContext,
    WatchResolver,
    shutdown_socket,
)
from discovery.target import Target, parse_host_port
from discovery.testing import wait_for


class RegistryResolverBuilder(ResolverBuilder):
    scheme = "registry"

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> WatchResolver:
        host, port = parse_host_port(target.authority, 80)  # TargetError before anything starts
        service = target.endpoint

        def watch(ctx: WatchContext) -> None:
            index = 0
            while not ctx.stopped:
                conn = http.client.HTTPConnection(host, port, timeout=700)
                conn.connect()
                unregister = ctx.on_interrupt(partial(shutdown_socket, conn.sock))  # close() aborts the GET
                try:
                    conn.request("GET", f"/services/{service}?index={index}&wait=600")
                    response = conn.getresponse()
                    if response.status != 200:  # raise: reported, then retried with backoff
                        raise ResolverError(f"registry {host}:{port} answered HTTP {response.status}")
                    body = json.loads(response.read())
                finally:
                    unregister()
                    conn.close()
                index = body["index"]
                ctx.publish(ResolverState(tuple(Address(*parse_host_port(a, None)) for a in body["addresses"])))

        resolver = WatchResolver(listener, watch, name="registry", clock=options.clock)
        resolver.start()
        return resolver

    def default_authority(self, target: Target) -> str | None:
        return None


class Registry(ThreadingHTTPServer):
    """A toy registry: GET /services/NAME?index=N blocks until the version passes N (10 min at most)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.changed = threading.Condition()
        self.version = 1
        self.addresses = ["127.0.0.1:50051", "127.0.0.1:50052"]

    def set_addresses(self, addresses: list[str]) -> None:
        with self.changed:
            self.addresses, self.version = addresses, self.version + 1
            self.changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: Registry

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        index, wait = int(query["index"][0]), float(query["wait"][0])
        with self.server.changed:
            self.server.changed.wait_for(lambda: self.server.version > index, timeout=wait)
            body = json.dumps({"index": self.server.version, "addresses": self.server.addresses}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    discovery.register_resolver(RegistryResolverBuilder(), replace=True)
    registry = Registry()
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    try:
        ch = discovery.insecure_channel(f"registry://127.0.0.1:{registry.server_port}/orders")
        wait_for(lambda: len(ch.backends()) == 2, message="two backends")
        print("backends:", ", ".join(sorted(b.address for b in ch.backends())))
        registry.set_addresses(["127.0.0.1:50052", "127.0.0.1:50053"])
        wait_for(lambda: {b.address for b in ch.backends()} == {"127.0.0.1:50052", "127.0.0.1:50053"},
                 message="the registry's new set")
        print("after the registry changed:", ", ".join(sorted(b.address for b in ch.backends())))
        t0 = time.monotonic()
        ch.close()  # the watch is blocked in a 10-minute long poll right now
        print(f"closed with a long poll pending in {(time.monotonic() - t0) * 1000:.0f} ms")
    finally:
        registry.shutdown()
        registry.server_close()


if __name__ == "__main__":
    main()
