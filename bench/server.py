"""The backend process: one grpc server listening on N loopback ports.

Run as ``python -m bench.server --ports N``. It prints one JSON line,
``{"pid": ..., "ports": [...]}``, on stdout once every port listens, then
serves until its stdin closes (so it dies with the harness even if the
harness is killed) or it gets SIGTERM.

Methods (identity bytes serializers, no protobuf, so the server does as
little as possible per RPC):

- ``/bench.Bench/Echo``   unary-unary, returns the request.
- ``/bench.Bench/Stream`` unary-stream, returns the request ``n`` times where
  ``n`` is the request's first byte (0 if empty).
- ``/bench.Bench/Sleep``  unary-unary, sleeps int(request) milliseconds (or until
  cancelled), returns the request, with initial metadata ("x-bench", "1")
  and trailing metadata ("x-bench-trailer", "2").
- ``/bench.Bench/Hold``   unary-stream that sends nothing and ends only when
  the client cancels (keeps a managed call open on a client channel).
- ``/bench.Bench/Collect`` stream-unary, reads every request, sleeps int(first
  request) milliseconds (or until cancelled), returns the number of requests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "bench.Bench"
ECHO = f"/{SERVICE}/Echo"
STREAM = f"/{SERVICE}/Stream"
HOLD = f"/{SERVICE}/Hold"
SLEEP = f"/{SERVICE}/Sleep"
COLLECT = f"/{SERVICE}/Collect"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for _ in range(request[0] if request else 0):
        yield request


def _sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.send_initial_metadata((("x-bench", "1"),))
    done = threading.Event()
    context.add_callback(done.set)
    done.wait(int(request or b"0") / 1000)
    context.set_trailing_metadata((("x-bench-trailer", "2"),))
    return request


def _collect(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    items = list(requests)
    done = threading.Event()
    context.add_callback(done.set)
    done.wait(int(items[0] or b"0") / 1000 if items else 0)
    return str(len(items)).encode()


def _hold(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    done = threading.Event()
    context.add_callback(done.set)
    done.wait()
    return iter(())


def build_server(ports: int, workers: int, host: str = "127.0.0.1") -> tuple[grpc.Server, list[int]]:
    """A started-ready (not yet started) server with ``ports`` listening ports."""
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Hold": grpc.unary_stream_rpc_method_handler(_hold),
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "Collect": grpc.stream_unary_rpc_method_handler(_collect),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        handlers=(handler,),
        options=[("grpc.so_reuseport", 0)],
    )
    bound = [server.add_insecure_port(f"{host}:0") for _ in range(ports)]
    if any(p == 0 for p in bound):
        raise RuntimeError("could not bind every port")
    return server, bound


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=10, help="listening ports (backends)")
    ap.add_argument("--workers", type=int, default=64, help="server handler threads")
    args = ap.parse_args(argv)
    server, ports = build_server(args.ports, args.workers)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        # EOF on stdin means the harness is gone: never outlive it.
        # os.read, not sys.stdin: a daemon thread blocked in a buffered
        # reader makes interpreter shutdown abort.
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
    server.stop(0).wait(5)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter shutdown with the stdin thread still blocked


if __name__ == "__main__":
    sys.exit(main())
