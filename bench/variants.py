"""The channels compared: A (floor), B (grpcio round_robin), D (discovery) and the future designs.

Every variant talks to the same backend process. Each is warmed up before
measuring: its connections are made and its first RPCs done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

import discovery

from .futures_design import DESIGNS, apply_design, future_is
from .server import ECHO

__all__ = ["LABELS", "Variant", "build"]

LABELS = {
    "A": "grpc.insecure_channel, 1 backend (floor)",
    "B": "grpcio native round_robin, N backends",
    "D": "discovery round_robin, N backends; futures: integrated, one shared grpc.aio loop",
    "D-old": "D with the pre-integration future: grpc's sync .future() on the backend channel",
    "S": "D-old + spin loops on pooled threads (grpc internals)",
    "P": "D + future as blocking with_call on a shared thread pool (public API only)",
    "K": "D-old + keep-alive stream per backend (thread per backend)",
}

# How the futures tables name the designs.
DISPLAY = {"D": "D (integrated: shared grpc.aio loop)", "D-old": "D-old (grpc sync .future())"}

RR = {"loadBalancingConfig": [{"round_robin": {}}]}


@dataclass
class Variant:
    name: str
    channel: Any
    mc: Any
    undo: Callable[[], None] = field(default=lambda: None)

    def close(self) -> None:
        try:
            self.undo()
        finally:
            self.channel.close()


def _wait_discovery_ready(ch: discovery.Channel, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bs = ch.backends()
        if len(bs) == n and all(b.state is grpc.ChannelConnectivity.READY for b in bs):
            return
        time.sleep(0.01)
    states = {b.address: b.state.name for b in ch.backends() if b.state is not grpc.ChannelConnectivity.READY}
    raise TimeoutError(f"discovery channel not READY on all {n} backends after {timeout}s: {states}")


def _warm(mc: Any, n: int, futures: int = 64) -> None:
    for _ in range(n):
        mc(b"w", 30.0, wait_for_ready=True)
    for start in range(0, futures, 64):
        futs = [mc.future(b"w", 30.0) for _ in range(min(64, futures - start))]
        for f in futs:
            f.result()


def build(name: str, targets: list[str], warm_rpcs: int | None = None) -> Variant:
    """Open, connect and warm up variant ``name`` over ``targets``."""
    n = len(targets)
    warm = warm_rpcs if warm_rpcs is not None else max(100, 3 * n)
    if name == "A":
        ch = grpc.insecure_channel(targets[0])
        grpc.channel_ready_future(ch).result(30)
        mc = ch.unary_unary(ECHO)
        _warm(mc, warm)
        return Variant(name, ch, mc)
    if name == "B":
        ch = grpc.insecure_channel(
            "ipv4:" + ",".join(targets),
            [("grpc.lb_policy_name", "round_robin"), ("grpc.default_authority", "localhost")],
        )
        grpc.channel_ready_future(ch).result(30)
        mc = ch.unary_unary(ECHO)
        # grpc's round_robin connects every subchannel once it leaves IDLE;
        # give all of them time to be READY so the rotation covers all N.
        _warm(mc, warm)
        time.sleep(min(2.0, 0.2 + n / 500))
        _warm(mc, warm)
        return Variant(name, ch, mc)
    if name in DESIGNS:
        ch = discovery.insecure_channel("static:///" + ",".join(targets), service_config=RR)
        _wait_discovery_ready(ch, n)
        mc = ch.unary_unary(ECHO)
        _warm(mc, warm)  # builds every backend's cached grpc multicallable too
        undo = apply_design(name, ch, mc)
        assert future_is(mc, name), f"design {name} not applied"
        # Futures on every backend: D opens each backend's aio twin here.
        _warm(mc, min(warm, 200), futures=max(64, 2 * n))
        return Variant(name, ch, mc, undo)
    raise ValueError(f"unknown variant {name!r}; expected one of {sorted(LABELS)}")
