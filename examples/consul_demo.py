"""The Consul demo: an embedded Consul agent, real OrderService backends, one ``consul:`` channel.

    python -m examples.consul_demo

Needs no Consul: it starts :class:`discovery_consul.testing.ConsulTestAgent`
(Consul's HTTP API in this process) on a free loopback port and three
OrderService backends on loopback. Each backend registers itself the way a
real service would, through the agent API with py-consul, with a gRPC health
check the agent runs every second. Then a client opens
``consul://127.0.0.1:PORT/orders?tag=v1`` and sends CreateOrder RPCs while:

1. all three backends are passing;
2. b1 reports NOT_SERVING: the agent's gRPC check turns critical and b1 leaves;
3. b2 deregisters (a scale-in): it leaves the channel;
4. b4 registers (a scale-out): traffic reaches it at once;
5. the agent restarts (connections reset, the index starts over): no RPC fails.

Point the same client at a real agent (``consul agent -dev``) by changing the
target's address; nothing else changes.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence

import consul
import grpc
from discovery_consul.testing import ConsulTestAgent
from grpc_health.v1 import health_pb2

import discovery
from examples.client import create_orders
from examples.server import ServedOrders, serve

# Plain round robin: here it is Consul's health checks that take bad backends out.
SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}]}


def start_backend(agent: ConsulTestAgent, name: str) -> ServedOrders:
    """Start an OrderService on a free port and register it with the agent, gRPC health check included."""
    served = serve("127.0.0.1", 0, name)
    client = consul.Consul(host=agent.host, port=agent.port)
    client.agent.service.register(
        "orders", service_id=name, address="127.0.0.1", port=served.port, tags=["v1"],
        check=consul.Check.grpc(f"127.0.0.1:{served.port}", "1s"))
    return served


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.02)
    return True


def ready(channel: discovery.Channel) -> set[str]:
    return {b.address for b in channel.backends() if b.state is grpc.ChannelConnectivity.READY}


def show(title: str, channel: discovery.Channel, rpcs: int) -> None:
    served, failed = create_orders(channel, rpcs)
    split = ", ".join(f"{name}={count}" for name, count in sorted(served.items()))
    print(f"{title:<40} {split}   failed={failed}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="grpc-discovery Consul demo (embedded test agent)")
    p.add_argument("--rpcs", type=int, default=300, help="RPCs per phase")
    args = p.parse_args(argv)
    backends: dict[str, ServedOrders] = {}
    with ConsulTestAgent() as agent:
        try:
            for name in ("b1", "b2", "b3"):
                backends[name] = start_backend(agent, name)
            addr = {name: f"127.0.0.1:{s.port}" for name, s in backends.items()}
            target = f"consul://{agent.address}/orders?tag=v1"
            print(f"consul test agent on {agent.address}; backends b1, b2, b3 registered with gRPC checks")
            print(f"client: discovery.insecure_channel({target!r})\n")
            with discovery.insecure_channel(target, service_config=SERVICE_CONFIG) as channel:
                # New checks start critical in Consul; the first probe passes them.
                if not wait_until(lambda: len(ready(channel)) == 3, 10):
                    raise SystemExit("the backends did not become passing and READY within 10 s")
                show("all three passing:", channel, args.rpcs)

                backends["b1"].health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                wait_until(lambda: addr["b1"] not in ready(channel), 10)
                show("b1 NOT_SERVING, its check critical:", channel, args.rpcs)

                consul.Consul(host=agent.host, port=agent.port).agent.service.deregister("b2")
                wait_until(lambda: addr["b2"] not in ready(channel), 10)
                show("b2 deregistered:", channel, args.rpcs)

                backends["b4"] = start_backend(agent, "b4")
                addr["b4"] = f"127.0.0.1:{backends['b4'].port}"
                wait_until(lambda: addr["b4"] in ready(channel), 10)
                show("b4 registered:", channel, args.rpcs)

                agent.restart()
                show("agent restarted:", channel, args.rpcs)
        finally:
            for s in backends.values():
                s.server.stop(None).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
