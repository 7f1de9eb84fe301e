"""The demo: three local OrderService backends, one balancing client, one backend killed.

    python -m examples.demo

Starts three backend processes on loopback (no registry needed), sends
CreateOrder RPCs through ``discovery.insecure_channel`` and prints the
per-backend split; then stops one backend the way an orchestrator does
(SIGTERM: it reports NOT_SERVING, drains, exits) and shows the traffic move
to the other two without a failed RPC; then kills another one outright
(SIGKILL) and shows the same.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

import grpc

import discovery
from examples.client import SERVICE_CONFIG, create_orders

C = grpc.ChannelConnectivity


def start_backend(name: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m examples.server`` on a free port; wait for its LISTENING line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.server", "--host", "127.0.0.1", "--port", "0", "--name", name,
         "--grace", "2", "--drain", "1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"backend {name} did not start: {line!r}")
    return proc, line.split()[1]


def show(title: str, channel: discovery.Channel, rpcs: int) -> None:
    served, failed = create_orders(channel, rpcs)
    split = ", ".join(f"{name}={count}" for name, count in sorted(served.items()))
    print(f"{title:<44} {split}   failed={failed}")
    for b in channel.backends():
        flags = "" if b.healthy else " (unhealthy)"
        print(f"    {b.address:<22} {b.state.name:<18}{flags}")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-check ``predicate`` every 50 ms until it holds; RuntimeError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting until {what}")
        pause.wait(0.05)


def usable(channel: discovery.Channel, index: int) -> bool:
    """Whether the channel would pick backend ``index`` (READY and passing its health check).

    ``backends()`` never runs ahead of the channel's picker, so once this
    says False no new RPC goes there, and once it says True the round robin
    rotation includes it.
    """
    backends = channel.backends()  # empty until the target is resolved
    return len(backends) > index and backends[index].state is C.READY and backends[index].healthy


def start_metrics(port: int) -> str:
    """Turn on discovery's Prometheus metrics and serve them on 127.0.0.1; return the /metrics URL."""
    from prometheus_client import start_http_server

    import discovery.metrics

    discovery.metrics.enable_prometheus()
    httpd, _thread = start_http_server(port, addr="127.0.0.1")
    url = f"http://127.0.0.1:{httpd.server_port}/metrics"
    print(f"client metrics on {url}")
    return url


def scrape(url: str, prefixes: Sequence[str]) -> list[str]:
    """The lines of a /metrics page that start with one of ``prefixes``."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith(tuple(prefixes))]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="grpc-discovery demo")
    p.add_argument("--rpcs", type=int, default=300, help="RPCs per phase")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve the client's Prometheus metrics at http://127.0.0.1:PORT/metrics (0: a free port) "
                        "and print what it served at the end")
    args = p.parse_args(argv)
    metrics_url = None if args.metrics_port is None else start_metrics(args.metrics_port)
    procs: list[subprocess.Popen[str]] = []
    try:
        addrs = []
        for name in ("b1", "b2", "b3"):
            proc, addr = start_backend(name)
            procs.append(proc)
            addrs.append(addr)
            print(f"started backend {name} on {addr} (pid {proc.pid})")
        target = "static:///" + ",".join(addrs)
        print(f"\nclient: discovery.insecure_channel({target!r}, service_config=...)\n")
        with discovery.insecure_channel(target, service_config=SERVICE_CONFIG) as channel:
            # Round robin splits evenly over the backends it can use; one still
            # connecting would get a smaller share, so wait for all three.
            channel.get_state(try_to_connect=True)
            wait_until(lambda: all(usable(channel, i) for i in range(3)), 30, "all three backends are READY")
            show("all three backends:", channel, args.rpcs)

            print("\nSIGTERM to b1: it reports NOT_SERVING, drains for 1 s, then stops")
            procs[0].send_signal(signal.SIGTERM)
            wait_until(lambda: not usable(channel, 0), 30, "the channel saw b1 report NOT_SERVING")
            show("after b1 left:", channel, args.rpcs)
            procs[0].wait(10)

            print("\nSIGKILL to b2: no warning at all; the channel notices the dropped connection")
            procs[1].kill()
            procs[1].wait(10)
            # An RPC already written to b2's connection when it died fails, as
            # with any gRPC client; once the channel has noticed, none goes there.
            wait_until(lambda: not usable(channel, 1), 30, "the channel noticed that b2 is gone")
            show("after b2 was killed:", channel, args.rpcs)
            if metrics_url is not None:
                print(f"\nclient metrics, as scraped from {metrics_url}:")
                for line in scrape(metrics_url, ("discovery_rpcs_total", "discovery_backends{")):
                    print(f"    {line}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
