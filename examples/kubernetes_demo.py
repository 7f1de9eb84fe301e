"""Kubernetes service discovery with no cluster: the plugin's embedded API server plays one.

    pip install -e plugins/kubernetes
    python -m examples.kubernetes_demo

Starts :class:`discovery_kubernetes.testing.KubeApiServer` on loopback (the
list/watch protocol of a real API server, bearer token included), writes a
kubeconfig for it, and runs three OrderService backends as "pods" on the
loopback addresses 127.0.0.11 to 127.0.0.13, all on one port, as pods of one
Service are. Then it plays the controllers: EndpointSlices appear, a pod is
added in a second slice, one terminates, the watch history is compacted (the
resolver relists after 410 Gone), and it prints the traffic split and the
backends the channel sees after each step. The client side is the one line a
real client has::

    discovery.insecure_channel("kubernetes:///orders.shop:grpc",
                               resolver_config={"kubeconfig": "~/.kube/config"})
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from discovery_kubernetes.testing import KubeApiServer, endpoint, endpoint_port

import discovery
from examples.client import create_orders
from examples.server import serve, shutdown

PODS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
SERVICE_CONFIG: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}


def wait_for_backends(channel: discovery.Channel, n: int, timeout: float = 10.0) -> None:
    """Wait until the channel lists exactly ``n`` backends, all READY."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.02)):
        states = [b.state for b in channel.backends()]
        if len(states) == n and all(s is grpc.ChannelConnectivity.READY for s in states):
            return
        pause.wait(0.02)
    raise TimeoutError(f"the channel did not get to {n} READY backends in {timeout}s")


def show(title: str, channel: discovery.Channel, rpcs: int) -> None:
    served, failed = create_orders(channel, rpcs)
    split = ", ".join(f"{name}={count}" for name, count in sorted(served.items()))
    print(f"{title:<34} {split}   failed={failed}")
    for b in channel.backends():
        where = f"zone={b.zone} node={b.attributes.get('node')} pod={b.attributes.get('pod')}"
        print(f"    {b.address:<18} {b.state.name:<6} {where}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rpcs", type=int, default=30)
    args = p.parse_args(argv)

    first = serve(PODS[0], 0, "orders-0")
    port = first.port
    backends = [first] + [serve(ip, port, f"orders-{i}") for i, ip in enumerate(PODS[1:], start=1)]

    def pod(i: int, ready: bool = True, serving: bool | None = None,
            terminating: bool | None = None) -> dict[str, Any]:
        return endpoint(PODS[i], ready=ready, serving=serving, terminating=terminating, zone=f"zone-{'ab'[i % 2]}",
                        node=f"node-{i}", pod=f"orders-{i}", pod_namespace="shop")

    grpc_port = [endpoint_port(port, "grpc")]
    with KubeApiServer(token="demo-token") as api, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        api.create_slice("orders-x1", "orders", [pod(0), pod(1)], grpc_port, namespace="shop")
        channel = discovery.insecure_channel("kubernetes:///orders.shop:grpc", service_config=SERVICE_CONFIG,
                                             resolver_config={"kubeconfig": str(kubeconfig)})
        try:
            wait_for_backends(channel, 2)
            show("two pods, one slice:", channel, args.rpcs)

            api.create_slice("orders-x2", "orders", [pod(2)], grpc_port, namespace="shop")
            wait_for_backends(channel, 3)
            show("a third pod, in a second slice:", channel, args.rpcs)

            api.update_slice("orders-x1", namespace="shop",
                             endpoints=[pod(0, ready=False, serving=True, terminating=True), pod(1)])
            wait_for_backends(channel, 2)
            show("orders-0 terminating:", channel, args.rpcs)

            api.hang_watches()  # the watch goes deaf; orders-0 comes back meanwhile
            api.update_slice("orders-x1", namespace="shop", endpoints=[pod(0), pod(1)])
            api.compact()  # and the history that would replay it is gone: 410 Gone, relist
            api.break_watches()
            wait_for_backends(channel, 3)
            show("after a 410 Gone and a relist:", channel, args.rpcs)
        finally:
            channel.close()
    for b in backends:
        shutdown(b.server, b.health, grace=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
