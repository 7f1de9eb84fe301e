"""Health checking: grpcio's core (gRFC A17) versus a Watch stream of our own.

    python -m bench.health [--backends 100]

The numbers behind the README's "Who runs the check" paragraph. For each
way it reports the threads it costs at N backends and how long a
SERVING -> NOT_SERVING -> SERVING change takes to show.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery._grpc_compat import state_reader
from discovery.testing.servers import SERVICE, BackendServer

C = grpc.ChannelConnectivity
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CORE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": SERVICE}})


def _until(pred, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``pred()`` holds, re-checking every 100 µs (a measurement, not a test wait)."""
    t0 = time.perf_counter()
    pause = threading.Event()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
        pause.wait(0.0001)
    return time.perf_counter() - t0


def core_reaction(server: BackendServer, rounds: int) -> list[float]:
    ch = grpc.insecure_channel(server.addr,
                               [("grpc.service_config", CORE_CONFIG), ("grpc.use_local_subchannel_pool", 1)])
    read = state_reader(ch)
    read(True)
    _until(lambda: read(False) is C.READY)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        server.set_health(NOT_SERVING)
        _until(lambda: read(False) is C.TRANSIENT_FAILURE)
        out.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        server.set_health(SERVING)
        _until(lambda: read(False) is C.READY)
        out.append(time.perf_counter() - t0)
    ch.close()
    return out


def watch_reaction(server: BackendServer, rounds: int) -> list[float]:
    ch = grpc.insecure_channel(server.addr)
    stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    latest = [next(stream).status]

    def reader() -> None:
        try:
            for msg in stream:
                latest[0] = msg.status
        except grpc.RpcError:
            pass

    threading.Thread(target=reader, daemon=True).start()
    out = []
    for _ in range(rounds):
        for status in (NOT_SERVING, SERVING):
            t0 = time.perf_counter()
            server.set_health(status)
            _until(lambda status=status: latest[0] == status)
            out.append(time.perf_counter() - t0)
    stream.cancel()
    ch.close()
    return out


def _drain(stream: object) -> None:
    try:
        for _ in stream:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError:
        pass


def _client_threads() -> int:
    # The servers run in this process too; their worker pools hold one thread
    # per open Watch whichever way the client checks, so leave them out.
    return sum(1 for t in threading.enumerate() if "ThreadPoolExecutor" not in t.name)


def threads_for(n: int, servers: list[BackendServer], own_watch: bool) -> int:
    before = _client_threads()
    channels, streams = [], []
    for i in range(n):
        s = servers[i % len(servers)]
        if own_watch:
            ch = grpc.insecure_channel(s.addr, [("grpc.use_local_subchannel_pool", 1)])
            st = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            threading.Thread(target=_drain, args=(st,), daemon=True).start()
            streams.append(st)
        else:
            ch = grpc.insecure_channel(s.addr, [("grpc.service_config", CORE_CONFIG),
                                                ("grpc.use_local_subchannel_pool", 1)])
            read = state_reader(ch)
            read(True)
            _until(lambda read=read: read(False) is C.READY, 10)
        channels.append(ch)
    if own_watch:
        _until(lambda: _client_threads() >= before + n, 10)
    used = _client_threads() - before
    for st in streams:
        st.cancel()
    for ch in channels:
        ch.close()
    return used


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    servers = [BackendServer(max_workers=max(8, args.backends // 4 + 4)).start() for _ in range(4)]
    try:
        core = core_reaction(servers[0], args.rounds)
        own = watch_reaction(servers[1], args.rounds)
        print(f"reaction, median of {len(core)} flips: core A17 {statistics.median(core) * 1e3:.2f} ms "
              f"(p90 {sorted(core)[int(len(core) * 0.9)] * 1e3:.2f}), "
              f"own Watch {statistics.median(own) * 1e3:.2f} ms (p90 {sorted(own)[int(len(own) * 0.9)] * 1e3:.2f})")
        print(f"client threads for {args.backends} health-checked backends: "
              f"core A17 {threads_for(args.backends, servers, False)}, "
              f"own Watch {threads_for(args.backends, servers, True)}")
        print("(discovery reads core state every slow_poll = 0.25 s, or at once after an RPC fails on the backend)")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
