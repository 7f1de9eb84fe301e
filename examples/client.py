"""The smallest useful client: an OrderService stub on a balancing channel.

Run it against backends you started yourself::

    python -m examples.client "static:///127.0.0.1:50051,127.0.0.1:50052" --rpcs 20
    python -m examples.client --config examples/discovery.toml --service orders

The only change from a plain grpcio client is the line that makes the channel.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence

import grpc

import discovery
from examples.orders import SERVICE_NAME, pb2, pb2_grpc

# Health-check the OrderService itself, balance round robin, and eject a
# backend after five failures in a row: a gRPC service config, as grpcio takes it.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"outlier_detection": {
        "interval": "1s", "baseEjectionTime": "10s", "consecutiveErrors": 5,
        "childPolicy": [{"round_robin": {}}]}}],
    "healthCheckConfig": {"serviceName": SERVICE_NAME},
}


def open_channel(target: str | None, config: str | None, service: str) -> grpc.Channel:
    """A discovery channel from a target URI or from a config file."""
    if config is not None or target is None:
        return discovery.channel_from_config(service, config)
    return discovery.insecure_channel(target, service_config=SERVICE_CONFIG)


def create_orders(channel: grpc.Channel, n: int, user: str = "demo-user") -> tuple[collections.Counter[str], int]:
    """Send ``n`` CreateOrder RPCs; count them by the backend that served each, and failures."""
    stub = pb2_grpc.OrderServiceStub(channel)
    served: collections.Counter[str] = collections.Counter()
    failed = 0
    for i in range(n):
        request = pb2.CreateOrderRequest(
            user_id=user, items=[pb2.OrderItem(sku=f"sku-{i % 7}", quantity=1 + i % 3, price_cents=499)])
        try:
            served[stub.CreateOrder(request, timeout=5).served_by] += 1
        except grpc.RpcError:
            failed += 1
    return served, failed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", nargs="?", help="a target URI such as static:///127.0.0.1:50051,127.0.0.1:50052")
    p.add_argument("--config", help="a discovery config file (default: $DISCOVERY_CONFIG, then ./discovery.toml)")
    p.add_argument("--service", default="orders", help="the [services.NAME] table to use with --config")
    p.add_argument("--rpcs", type=int, default=20)
    args = p.parse_args(argv)
    with open_channel(args.target, args.config, args.service) as channel:
        served, failed = create_orders(channel, args.rpcs)
    for name, count in sorted(served.items()):
        print(f"{name}: {count}")
    print(f"failed: {failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
