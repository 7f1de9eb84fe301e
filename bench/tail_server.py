"""Backends of the tail-latency benchmark: one grpc server per port, each as slow as it is told.

Run as ``python -m bench.tail_server --delays-ms 2,2,2,2,20``. Like
:mod:`bench.server` it prints one JSON line ``{"pid": ..., "ports": [...]}``
once every port listens and serves until its stdin closes.

``/bench.Bench/Work`` waits the port's delay (a backend doing I/O-bound
work: a sleeping handler, so a slow backend costs latency, not this
process's CPU) and returns the port's index. Every server reports ORCA
load through :mod:`discovery.orca`: the qps it counts, and as application
utilization its busy fraction = (handler time in the last 0.2 s) / 0.2 s /
``--capacity``, so a backend 10x slower per request reports 10x the
utilization at the same qps: weighted round robin then weighs it 1/10.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

from discovery import orca

SERVICE = "bench.Bench"
WORK = f"/{SERVICE}/Work"


class _Busy:
    """Handler seconds, sampled into ServerMetrics' application utilization."""

    def __init__(self, metrics: orca.ServerMetrics, capacity: float) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self.lock = threading.Lock()
        self.total = 0.0

    def add(self, seconds: float) -> None:
        with self.lock:
            self.total += seconds

    def sample_forever(self, stop: threading.Event, period: float = 0.2) -> None:
        last, t0 = 0.0, time.monotonic()
        while not stop.wait(period):
            with self.lock:
                total = self.total
            t = time.monotonic()
            util = (total - last) / (t - t0) / self.capacity
            last, t0 = total, t
            # A server that got no work in the window has not shown its cost yet: keep the last value.
            if util > 0:
                self.metrics.set_application_utilization(util)


def build(delay_ms: float, index: int, workers: int, capacity: float, stop: threading.Event
          ) -> tuple[grpc.Server, int]:
    metrics = orca.ServerMetrics(window=1.0)
    busy = _Busy(metrics, capacity)
    reply = str(index).encode()

    def work(request: bytes, context: grpc.ServicerContext) -> bytes:
        t = time.monotonic()
        done = threading.Event()
        context.add_callback(done.set)
        done.wait(delay_ms / 1000)
        busy.add(time.monotonic() - t)
        return reply

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Work": grpc.unary_unary_rpc_method_handler(work)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=(handler,),
                         interceptors=[orca.OrcaInterceptor(metrics)], options=[("grpc.so_reuseport", 0)])
    orca.add_orca_service(server, metrics, min_report_interval=0.1)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        raise RuntimeError("could not bind a port")
    threading.Thread(target=busy.sample_forever, args=(stop,), daemon=True).start()
    return server, port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tail_server", description=__doc__.splitlines()[0])
    ap.add_argument("--delays-ms", default="2,2,2,2,20", help="one delay per backend (default 2,2,2,2,20)")
    ap.add_argument("--workers", type=int, default=64, help="handler threads per server")
    ap.add_argument("--capacity", type=float, default=8.0, help="requests a backend serves at once at 100%%")
    args = ap.parse_args(argv)
    stop = threading.Event()
    servers, ports = [], []
    for i, d in enumerate(float(x) for x in args.delays_ms.split(",")):
        server, port = build(d, i, args.workers, args.capacity, stop)
        server.start()
        servers.append(server)
        ports.append(port)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    sys.stdout.write(json.dumps({"pid": os.getpid(), "ports": ports}) + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    for s in servers:
        s.stop(0)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
