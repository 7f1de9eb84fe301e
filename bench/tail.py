"""Tail latency with one backend 10x slower: each policy's p50/p99, side by side in one run.

``python -m bench tail`` starts :mod:`bench.tail_server` (a separate
process: by default four backends answering in 2 ms and one in 20 ms, all
reporting ORCA load) and drives every policy from one asyncio loop: 16
tasks, each awaiting one unary call after the other (a closed loop, so a
policy that sends work to the slow backend pays for it in latency). Rounds
interleave the policies (order rotated each round) on channels kept open,
so what a policy learned (latency estimates, ORCA weights) carries over,
as it would in a long-running client. Reported: latency percentiles over
all rounds and the share of RPCs the slow backend served.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

import discovery.aio

from .harness import machine
from .procs import BackendProcess
from .tail_server import WORK

__all__ = ["POLICIES", "run_tail"]

# The policies compared; None is grpcio's own round_robin (grpc.aio over an ipv4: target).
POLICIES: dict[str, dict[str, Any] | None] = {
    "grpcio round_robin": None,
    "round_robin": {"round_robin": {}},
    "least_request": {"least_request": {}},
    "peak_ewma": {"peak_ewma": {}},
    "weighted_round_robin + ORCA": {"weighted_round_robin": {
        "enableOobLoadReport": True, "oobReportingPeriod": "0.2s", "blackoutPeriod": "1s",
        "weightUpdatePeriod": "0.2s"}},
}


@dataclass
class _Result:
    latencies: list[float] = field(default_factory=list)
    slow: int = 0
    errors: int = 0


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else float("nan")


async def _open(name: str, cfg: dict[str, Any] | None, targets: list[str]) -> tuple[Any, Any]:
    if cfg is None:
        ch = grpc.aio.insecure_channel("ipv4:" + ",".join(targets), options=[
            ("grpc.lb_policy_name", "round_robin"), ("grpc.default_authority", "localhost")])
        await asyncio.wait_for(ch.channel_ready(), 30)
    else:
        ch = discovery.aio.insecure_channel("static:///" + ",".join(targets),
                                            service_config={"loadBalancingConfig": [cfg]})
    return ch, ch.unary_unary(WORK)


async def _drive(mc: Any, rpcs: int, concurrency: int, slow_index: bytes, res: _Result) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            try:
                reply = await mc(b"", timeout=10)
            except grpc.aio.AioRpcError:
                res.errors += 1
                continue
            res.latencies.append(time.perf_counter() - t)
            if reply == slow_index:
                res.slow += 1

    per = rpcs // concurrency
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))


async def _run(targets: list[str], slow: int, rounds: int, rpcs: int, concurrency: int, warm_s: float,
               log: Any) -> dict[str, _Result]:
    from .micro import ensure_policies

    ensure_policies()
    chans = {name: await _open(name, cfg, targets) for name, cfg in POLICIES.items()}
    slow_index = str(slow).encode()
    try:
        # Warm every channel: connections made, estimates and ORCA weights learned (blackout 1 s).
        t_end = time.monotonic() + warm_s
        while time.monotonic() < t_end:
            for _, mc in chans.values():
                await _drive(mc, concurrency * 4, concurrency, slow_index, _Result())
        results = {name: _Result() for name in POLICIES}
        names = list(POLICIES)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                await _drive(chans[name][1], rpcs, concurrency, slow_index, results[name])
            print(f"# round {r + 1}/{rounds} done", file=log, flush=True)
        return results
    finally:
        for ch, _ in chans.values():
            await ch.close()


def run_tail(*, delays_ms: list[float], rounds: int = 3, rpcs: int = 2000, concurrency: int = 16,
             warm_s: float = 3.0, json_path: str | None = None, log: Any = sys.stderr) -> dict[str, Any]:
    """Run the comparison, print the table, return (and optionally write) the numbers."""
    slow = max(range(len(delays_ms)), key=lambda i: delays_ms[i])
    args = ["--delays-ms", ",".join(f"{d:g}" for d in delays_ms)]
    with BackendProcess(len(delays_ms), module="bench.tail_server", args=args) as bp:
        results = asyncio.run(_run(bp.targets, slow, rounds, rpcs, concurrency, warm_s, log))
    rows = []
    for name, res in results.items():
        lat = res.latencies
        rows.append({
            "policy": name, "rpcs": len(lat), "errors": res.errors,
            "p50_ms": _pct(lat, 50) * 1e3, "p90_ms": _pct(lat, 90) * 1e3, "p99_ms": _pct(lat, 99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
            "slow_share": res.slow / len(lat) if lat else float("nan"),
        })
    out = {"machine": machine(), "delays_ms": delays_ms, "rounds": rounds, "rpcs": rpcs,
           "concurrency": concurrency, "rows": rows}
    print(format_tail(out))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


def format_tail(out: dict[str, Any]) -> str:
    d = out["delays_ms"]
    lines = [f"tail latency: backends answering in {', '.join(f'{x:g}' for x in d)} ms; {out['concurrency']} "
             f"concurrent callers; {out['rounds']} rounds x {out['rpcs']} RPCs per policy",
             "",
             f"  {'policy':30} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'mean ms':>8} {'to slow':>8}",
             "  " + "-" * 72]
    fair = 1 / len(d)
    for r in out["rows"]:
        lines.append(f"  {r['policy']:30} {r['p50_ms']:7.2f} {r['p90_ms']:7.2f} {r['p99_ms']:7.2f} "
                     f"{r['mean_ms']:8.2f} {r['slow_share']:8.1%}" + (f"  errors={r['errors']}" if r["errors"] else ""))
    lines.append(f"  (round robin's share of the slow backend would be {fair:.0%})")
    return "\n".join(lines)
