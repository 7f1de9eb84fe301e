"""The channels compared: A (floor), B (grpcio round_robin), D (discovery).

Every variant talks to the same backend process. Each is warmed up before
measuring: its connections are made and its first RPCs done.

:func:`build` makes the sync variants (sync, future, threads modes);
:func:`build_aio` the grpc.aio ones (aio mode), on :func:`bench.modes.aio_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

import discovery
import discovery.aio

from .modes import AioTarget
from .server import ECHO

__all__ = ["AIO_LABELS", "AIO_NOTE", "LABELS", "POLICY_VARIANTS", "Variant", "build", "build_aio"]

LABELS = {
    "A": "grpc.insecure_channel, 1 backend (floor)",
    "B": "grpcio native round_robin, N backends",
    "D": "discovery round_robin, N backends; futures on one shared grpc.aio loop",
    "DM": "D with Prometheus metrics on (discovery.metrics, observer installed only while DM is measured)",
}

# discovery channels with another policy, built like D (the futures design is D's).
POLICY_VARIANTS: dict[str, dict[str, Any]] = {
    "LR": {"loadBalancingConfig": [{"least_request": {}}]},
    "PE": {"loadBalancingConfig": [{"peak_ewma": {}}]},
    "WRR": {"loadBalancingConfig": [{"weighted_round_robin": {}}]},
    "CB": {"loadBalancingConfig": [{"circuit_breaker": {"maxRequestsPerBackend": 1000}}]},
    "OD": {"loadBalancingConfig": [{"outlier_detection": {}}]},
}
LABELS.update({
    "LR": "discovery least_request, N backends",
    "PE": "discovery peak_ewma, N backends",
    "WRR": "discovery weighted_round_robin (registry weights 1..4: EDF), N backends",
    "CB": "discovery circuit_breaker over round_robin, N backends",
    "OD": "discovery outlier_detection over round_robin, N backends",
})

# The same letters in the aio mode.
AIO_LABELS = {
    "A": "grpc.aio.insecure_channel, 1 backend",
    "B": "grpc.aio.insecure_channel, grpcio native round_robin over N backends (ipv4: target)",
    "D": "discovery.aio.insecure_channel, round_robin over N backends (static: target; one grpc.aio channel "
         "per backend, on the mode's loop)",
    "DM": "D (aio) with Prometheus metrics on (only while DM is measured)",
}

AIO_LABELS.update({k: "discovery.aio.insecure_channel, " + v.removeprefix("discovery ")
                   for k, v in LABELS.items() if k in POLICY_VARIANTS})

AIO_NOTE = (
    "aio: one asyncio loop on the main thread; 32 tasks, each awaiting one unary call after the other (the "
    "pattern of grpc's own asyncio benchmark client), so 32 RPCs are in flight. Channels are made and warmed "
    "on that loop before any round. With other modes in the same run, discovery's futures loop exists (the "
    "sync D variant warms up with futures); that thread, a second grpc.aio loop, wakes for every grpc.aio "
    "completion batch and adds ~20 us/RPC to every aio variant: run `--modes aio` alone for clean aio numbers."
)

RR = {"loadBalancingConfig": [{"round_robin": {}}]}


@dataclass
class Variant:
    name: str
    channel: Any
    mc: Any
    undo: Callable[[], None] = field(default=lambda: None)
    loop: asyncio.AbstractEventLoop | None = None  # a grpc.aio channel's loop (aio variants)
    # What the harness runs around each measured loop of this variant (DM: metrics on).
    active: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)

    def close(self) -> None:
        try:
            self.undo()
        finally:
            if self.loop is not None:
                self.loop.run_until_complete(self.channel.close())
            else:
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


def _weights(name: str, n: int) -> dict[str, Any] | None:
    # Unequal registry weights, so weighted_round_robin runs its EDF scheduler.
    return {"weights": [1 + i % 4 for i in range(n)]} if name == "WRR" else None


def _warm(mc: Any, n: int, futures: int = 64) -> None:
    for _ in range(n):
        mc(b"w", 30.0, wait_for_ready=True)
    for start in range(0, futures, 64):
        futs = [mc.future(b"w", 30.0) for _ in range(min(64, futures - start))]
        for f in futs:
            f.result()


def _metrics_on() -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A context manager factory that turns Prometheus metrics on (process-wide) while it is entered.

    One :class:`~discovery.metrics.PrometheusMetrics` for the whole run, so its
    per-label children are made once, as in a long-running client; only the
    observer is added and removed around each measured loop.
    """
    from prometheus_client import CollectorRegistry

    from discovery import observe
    from discovery.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(CollectorRegistry())
    metrics.register()

    @contextlib.contextmanager
    def on() -> Iterator[None]:
        observe.add_observer(metrics)
        try:
            yield
        finally:
            observe.remove_observer(metrics)

    return on


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
    if name == "DM":
        v = build("D", targets, warm_rpcs)
        v.name, v.active = "DM", _metrics_on()
        with v.active():
            _warm(v.mc, warm)  # the metrics' label children exist before measuring
        return v
    if name in POLICY_VARIANTS:
        from .micro import ensure_policies

        ensure_policies()
        ch = discovery.insecure_channel("static:///" + ",".join(targets), service_config=POLICY_VARIANTS[name],
                                        resolver_config=_weights(name, n))
        _wait_discovery_ready(ch, n)
        mc = ch.unary_unary(ECHO)
        _warm(mc, warm, futures=max(64, 2 * n))
        return Variant(name, ch, mc)
    if name == "D":
        ch = discovery.insecure_channel("static:///" + ",".join(targets), service_config=RR)
        _wait_discovery_ready(ch, n)
        mc = ch.unary_unary(ECHO)
        _warm(mc, warm)  # builds every backend's cached grpc multicallable too
        # Futures on every backend: D opens each backend's aio twin here.
        _warm(mc, min(warm, 200), futures=max(64, 2 * n))
        return Variant(name, ch, mc)
    raise ValueError(f"unknown variant {name!r}; expected one of {sorted(LABELS)}")


# -- grpc.aio (the aio mode) -----------------------------------------------------


async def _warm_aio(mc: Any, n: int, concurrent: int = 64) -> None:
    for _ in range(n):
        await mc(b"w", timeout=30.0, wait_for_ready=True)
    for start in range(0, concurrent, 64):
        await asyncio.gather(*[mc(b"w", timeout=30.0) for _ in range(min(64, concurrent - start))])


async def _wait_discovery_aio_ready(ch: discovery.aio.Channel, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    await asyncio.wait_for(ch.channel_ready(), timeout)
    while time.monotonic() < deadline:
        bs = ch.backends()
        if len(bs) == n and all(b.state is grpc.ChannelConnectivity.READY for b in bs):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"discovery.aio channel not READY on all {n} backends after {timeout}s")


async def _build_aio(name: str, targets: list[str], warm: int) -> tuple[Any, Any]:
    n = len(targets)
    if name == "A":
        ch = grpc.aio.insecure_channel(targets[0])
        await asyncio.wait_for(ch.channel_ready(), 30)
        mc = ch.unary_unary(ECHO)
        await _warm_aio(mc, warm)
        return ch, mc
    if name == "B":
        ch = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(targets),
            options=[("grpc.lb_policy_name", "round_robin"), ("grpc.default_authority", "localhost")],
        )
        await asyncio.wait_for(ch.channel_ready(), 30)
        mc = ch.unary_unary(ECHO)
        await _warm_aio(mc, warm)
        await asyncio.sleep(min(2.0, 0.2 + n / 500))  # every subchannel READY, as in build()
        await _warm_aio(mc, warm)
        return ch, mc
    if name in ("D", "DM") or name in POLICY_VARIANTS:
        from .micro import ensure_policies

        ensure_policies()
        dch = discovery.aio.insecure_channel("static:///" + ",".join(targets),
                                             service_config=POLICY_VARIANTS.get(name, RR),
                                             resolver_config=_weights(name, n))
        await _wait_discovery_aio_ready(dch, n)
        mc = dch.unary_unary(ECHO)
        # Round robin over >= 3N sequential calls: every backend makes (and
        # connects) its grpc.aio twin on this loop before anything is measured.
        await _warm_aio(mc, warm, concurrent=max(64, 2 * n))
        return dch, mc
    raise ValueError(f"unknown aio variant {name!r}; expected one of {sorted(AIO_LABELS)}")


def build_aio(name: str, targets: list[str], loop: asyncio.AbstractEventLoop,
              warm_rpcs: int | None = None) -> Variant:
    """Open, connect and warm up the grpc.aio variant ``name`` on ``loop`` (run here, on this thread)."""
    warm = warm_rpcs if warm_rpcs is not None else max(100, 3 * len(targets))
    ch, mc = loop.run_until_complete(_build_aio(name, targets, warm))
    v = Variant(name, ch, AioTarget(loop, mc), loop=loop)
    if name == "DM":
        v.active = _metrics_on()
        with v.active():
            loop.run_until_complete(_warm_aio(mc, warm))
    return v
