"""Micro-benchmarks: pick cost, reconcile cost, discovery's per-RPC overhead, memory.

- **pick**: every registered balancer, its picker built through the balancer
  (a helper captures ``update_picker``) over READY ``FakeSubConn`` backends.
  Goal: <= 1 us per pick.
- **reconcile**: :class:`discovery.manager.SubchannelManager` with 10,000
  addresses: the first state, an identical one (a NEW but equal
  ResolverState with new Address objects, as a resolver makes; goal <= 1 ms)
  and one with 1 % churn (goal <= 50 ms; unchanged backends must be the same
  objects). With a fake ``make_channel`` and with real grpc channels.
- **hotpath**: discovery's own Python cost per RPC, measured by running its
  multicallables over backends whose grpc multicallables (sync and aio) are
  no-ops.
- **memory**: per idle backend (1,000 real grpc channels, not connected) and
  per connected backend (READY channels to the backend process), with the
  cost of the grpc.aio twin a backend gets when it serves futures.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc._cython import cygrpc

import discovery
from discovery.address import Address, ResolverState
from discovery.backend import Backend
from discovery.control import ControlLoop
from discovery.manager import SubchannelManager
from discovery.testing import FakeClock, FakeHelper, FakeSubConn, update

__all__ = ["run_micro"]

READY = grpc.ChannelConnectivity.READY


def _balancer_builders() -> dict[str, Any]:
    ensure_policies()
    return dict(discovery.registered_balancers())


def ensure_policies() -> None:
    """Register this checkout's built-in policies that the installed entry points lack (an install
    made before they existed); an installed one wins."""
    from discovery.balancers.circuit_breaker import CircuitBreakerBuilder
    from discovery.balancers.least_request import LeastRequestBuilder
    from discovery.balancers.peak_ewma import PeakEwmaBuilder
    from discovery.balancers.weighted_round_robin import WeightedRoundRobinBuilder

    for b in (LeastRequestBuilder(), PeakEwmaBuilder(), WeightedRoundRobinBuilder(), CircuitBreakerBuilder()):
        if not discovery.registry.has_balancer(b.name):
            discovery.register_balancer(b)


class _Timer:
    def cancel(self) -> None:
        pass


class _Capture:
    """A BalancerHelper that keeps the last picker; timers never fire, the rest is a no-op.

    Unknown helper methods (the interface is still growing) are no-ops too.
    """

    def __init__(self) -> None:
        from discovery.clock import SYSTEM_CLOCK

        self.picker: Any = None
        self.state: Any = None
        self.clock = SYSTEM_CLOCK

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Any) -> None:
        self.state, self.picker = state, picker

    def schedule(self, delay: float, fn: Callable[[], None]) -> Any:
        return _Timer()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


def _addresses(n: int, port0: int = 10000, weight: int = 1) -> tuple[Address, ...]:
    # 127.x.y.z hosts (loopback only): distinct, never contacted (fake
    # channels) or never connected (real idle channels are not asked to).
    return tuple(Address(f"127.{i // 65536 % 256}.{i // 256 % 256}.{i % 256 + 1 if i % 256 < 255 else 1}",
                         port0 + i % 50000, weight)
                 for i in range(n))


def _best_per_call(fn: Callable[[], None], loops: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` seconds per call of ``fn`` run ``loops`` times."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in itertools.repeat(None, loops):
            fn()
        best = min(best, (time.perf_counter() - t) / loops)
    return best


# (label, policy, config, weights of the addresses, request metadata): the pick
# benchmark's cases. Routing policies read a header: a ring_hash key, or a
# subset (one tenth of the backends: _routed_addresses gives ten versions,
# three zones).
PICK_CASES: tuple[tuple[str, str, dict[str, Any], Callable[[int], int], Any], ...] = (
    ("pick_first", "pick_first", {}, lambda i: 1, None),
    ("round_robin", "round_robin", {}, lambda i: 1, None),
    ("round_robin slowStart", "round_robin", {"slowStart": {}}, lambda i: 1, None),
    ("weighted_round_robin", "weighted_round_robin", {}, lambda i: 1 + i % 4, None),
    ("least_request", "least_request", {}, lambda i: 1, None),
    ("peak_ewma", "peak_ewma", {}, lambda i: 1, None),
    ("circuit_breaker(rr)", "circuit_breaker", {"maxRequestsPerBackend": 100}, lambda i: 1, None),
    ("outlier_detection(rr)", "outlier_detection", {}, lambda i: 1, None),
    ("ring_hash", "ring_hash", {"requestHashHeader": "x-user"}, lambda i: 1,
     (("x-trace", "1"), ("x-user", "user-1234"))),
    ("subset", "subset", {"header": "x-version", "attribute": "version"}, lambda i: 1,
     (("x-trace", "1"), ("x-version", "v3"))),
    ("priority_failover", "priority_failover", {}, lambda i: 1, None),
    ("zone_aware", "zone_aware", {"localZone": "zone-0"}, lambda i: 1, None),
)


def _routed_addresses(n: int, weight: Callable[[int], int] = lambda i: 1) -> tuple[Address, ...]:
    """:func:`_addresses` with the data routing policies read: a version attribute and a zone."""
    return tuple(Address(a.host, a.port, weight(i), zone=f"zone-{i % 3}", attributes={"version": f"v{i % 10}"})
                 for i, a in enumerate(_addresses(n)))


def bench_pick(sizes: Sequence[int], loops: int) -> list[dict[str, Any]]:
    """Per case and size: one pick plus its ``done`` (what an RPC costs the policy), best of 5.

    Weighted round robin gets addresses of weights 1..4, so its EDF scheduler
    is measured (equal weights make it plain rotation). Slow start is
    measured while one backend (added after the first picker) ramps.
    """
    from discovery.balancer import DoneInfo

    builders = _balancer_builders()
    ok = DoneInfo(grpc.StatusCode.OK, 0.001)
    out = []
    for label, name, config, weight, metadata in PICK_CASES:
        builder = builders.get(name)
        if builder is None:
            continue
        for n in sizes:
            subs = [FakeSubConn(a, state=READY) for a in _routed_addresses(n, weight)]
            helper = FakeHelper(FakeClock())
            try:
                cfg = builder.parse_config(config, key_path="loadBalancingConfig[0]")
                bal = builder.build(helper, cfg)
                if "slowStart" in config:
                    update(bal, subs[:-1])
                update(bal, subs)
            except Exception as exc:
                out.append({"balancer": label, "backends": n, "error": f"{type(exc).__name__}: {exc}"})
                continue
            picker = helper.picker
            pick = picker.pick
            method = "/bench.Bench/Echo"
            got = pick(method, metadata)
            if got is not None and got.done is not None:
                got.done(ok)

            def one(pick: Any = pick, method: str = method, md: Any = metadata) -> None:
                r = pick(method, md)
                d = r.done
                if d is not None:
                    d(ok)

            empty = _best_per_call(lambda: None, loops)
            per = _best_per_call(one, loops)
            out.append({"balancer": label, "backends": n, "pick_us": per * 1e6,
                        "pick_us_net": max(0.0, per - empty) * 1e6, "picked": got is not None,
                        "picker": type(picker).__name__, "goal_us": 1.0, "ok": per * 1e6 <= 1.0})
    return out


def bench_spread_pick(sizes: Sequence[int], loops: int) -> list[dict[str, Any]]:
    """zone_aware spreading RPCs over three zones (below minClusterSize): the weighted
    choice between groups that priority_failover and zone_aware make while they spill."""
    builder = _balancer_builders().get("zone_aware")
    if builder is None:
        return []
    out = []
    for n in sizes:
        helper = _Capture()
        bal = builder.build(helper, builder.parse_config({"localZone": "zone-0", "minClusterSize": n + 1},
                                                         key_path="lb"))
        update(bal, [FakeSubConn(a, state=READY) for a in _routed_addresses(n)])
        pick = helper.picker.pick
        empty = _best_per_call(lambda: None, loops)
        per = _best_per_call(lambda pick=pick: pick("/bench.Bench/Echo", None), loops)
        out.append({"balancer": "zone_aware spread", "backends": n, "pick_us": per * 1e6,
                    "pick_us_net": max(0.0, per - empty) * 1e6, "picked": True, "goal_us": 1.0, "ok": per * 1e6 <= 1.0})
    return out


def bench_ring(n: int, repeat: int = 3) -> dict[str, Any]:
    """ring_hash at ``n`` backends: building the ring (gRPC's default sizes, and one
    large enough for ten entries per backend) and a whole address-set update."""
    from discovery.balancers.ring_hash import build_ring

    addrs = _addresses(n)
    keys = [a.addr for a in addrs]
    weights = [1] * n
    default = min(_timed(lambda: build_ring(keys, weights, 1024, 4096))[0] for _ in range(repeat))
    entries = len(build_ring(keys, weights, 1024, 4096)[0])
    big = 10 * n
    large = min(_timed(lambda: build_ring(keys, weights, big, big))[0] for _ in range(repeat))
    builder = _balancer_builders().get("ring_hash")
    update_ms = None
    if builder is not None:
        subs = [FakeSubConn(a, state=READY) for a in addrs]
        times = []
        for _ in range(repeat):
            bal = builder.build(_Capture(), builder.parse_config({"requestHashHeader": "x-user"}, key_path="lb"))
            times.append(_timed(lambda bal=bal: update(bal, subs))[0])
        update_ms = min(times) * 1e3
    return {"backends": n, "ring_default_ms": default * 1e3, "ring_default_entries": entries,
            "ring_large_ms": large * 1e3, "ring_large_entries": big, "update_ms": update_ms}


# -- reconcile -------------------------------------------------------------

class _FakeCore:
    __slots__ = ()

    def check_connectivity_state(self, try_to_connect: bool) -> Any:
        return cygrpc.ConnectivityState.idle


class FakeGrpcChannel:
    """Just enough of a grpc channel for Backend: ``_channel`` for state reads, ``close``."""

    __slots__ = ("_channel", "closed")

    def __init__(self) -> None:
        self._channel = _FakeCore()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _fake_make_channel(a: Address) -> Backend:
    return Backend(a, FakeGrpcChannel())  # type: ignore[arg-type]


def _real_grpc_channel(a: Address) -> grpc.Channel:
    return grpc.insecure_channel(a.addr, [("grpc.use_local_subchannel_pool", 1)])


def _real_make_channel(a: Address) -> Backend:
    return Backend(a, _real_grpc_channel(a))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def bench_reconcile(n: int, churn: float, real: bool, repeat: int = 5) -> dict[str, Any]:
    loop = ControlLoop("bench-reconcile")
    make = _real_make_channel if real else _fake_make_channel
    try:
        mgr = SubchannelManager(loop, make, drain_grace=0.0)
        base = _addresses(n)
        t_create, (changed, _) = _timed(lambda: mgr.update(ResolverState(base)))
        assert changed
        first = {b.addr: b for b in mgr.backends}
        # Identical: a new ResolverState of new (equal) Address objects.
        same_times, plain_build = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            st = ResolverState(tuple(Address(a.host, a.port, a.weight) for a in base))
            plain_build.append(time.perf_counter() - t)
            dt, (changed, _) = _timed(lambda st=st: mgr.update(st))
            assert not changed, "an identical state changed the backend set"
            same_times.append(dt)
        # Churn: drop the first k, add k new ones.
        k = max(1, int(n * churn))
        extra = tuple(Address(f"127.200.{i // 256}.{i % 256 + 1}", 20000 + i) for i in range(k))
        churned = base[k:] + extra
        st = ResolverState(tuple(Address(a.host, a.port, a.weight) for a in churned))
        t_churn, (changed, removed) = _timed(lambda: mgr.update(st))
        mgr.drain(removed)
        assert changed
        now = {b.addr: b for b in mgr.backends}
        kept = [a.addr for a in base[k:]]
        untouched = all(now[key] is first[key] for key in kept) and not any(
            getattr(first[key].channel, "closed", False) for key in kept)
        # Where the identical-state time goes: the compare of two equal states
        # (their keys are built in ResolverState.__post_init__, on the resolver's thread).
        s1 = ResolverState(tuple(Address(a.host, a.port, a.weight) for a in base))
        s2 = ResolverState(tuple(Address(a.host, a.port, a.weight) for a in base))
        eq_time = min(_timed(lambda: s1 == s2)[0] for _ in range(repeat))
        addrs = tuple(Address(a.host, a.port, a.weight) for a in base)
        state_build = min(_timed(lambda: ResolverState(addrs))[0] for _ in range(repeat))
        t_close, _ = _timed(mgr.close_all)
        return {
            "backends": n, "real_channels": real,
            "create_ms": t_create * 1e3, "create_us_per_backend": t_create / n * 1e6,
            "identical_ms": statistics.median(same_times) * 1e3, "identical_goal_ms": 1.0,
            "churn": churn, "churn_ms": t_churn * 1e3, "churn_goal_ms": 50.0,
            "unchanged_untouched": untouched,
            "state_eq_ms": eq_time * 1e3,
            "state_construct_ms": state_build * 1e3,
            "state_and_addresses_construct_ms": statistics.median(plain_build) * 1e3,
            "close_all_ms": t_close * 1e3,
        }
    finally:
        loop.stop()


# -- discovery's own per-RPC overhead ---------------------------------------------

class _NoopCall:
    __slots__ = ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


_NOOP_CALL = _NoopCall()


class _NoopMC:
    """A grpc unary multicallable that does nothing (measures the wrapper around it)."""

    __slots__ = ()

    def __call__(self, request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: Any = None, compression: Any = None) -> Any:
        return request

    def with_call(self, request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                  wait_for_ready: Any = None, compression: Any = None) -> Any:
        return request, _NOOP_CALL

    def future(self, request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
               wait_for_ready: Any = None, compression: Any = None) -> Any:
        return _NOOP_CALL


class _NoopAioCall:
    """A finished grpc.aio call: awaiting it returns the request without suspending."""

    __slots__ = ("_response",)

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Any:
        return self._response
        yield  # a generator, as grpc.aio's __await__ is

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def cancelled(self) -> bool:
        return False

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def trailing_metadata(self) -> tuple[()]:
        return ()


class _NoopAioMC:
    __slots__ = ()

    def __call__(self, request: Any, *, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: Any = None, compression: Any = None) -> Any:
        return _NoopAioCall(request)


class _NoopAioChannel:
    __slots__ = ()

    def unary_unary(self, *a: Any, **k: Any) -> Any:
        return _NoopAioMC()

    async def close(self, grace: Any = None) -> None:
        pass


class _ReadyCore:
    __slots__ = ()

    def check_connectivity_state(self, try_to_connect: bool) -> Any:
        return cygrpc.ConnectivityState.ready


class _NoopGrpcChannel:
    __slots__ = ("_channel",)

    def __init__(self) -> None:
        self._channel = _ReadyCore()

    def unary_unary(self, *a: Any, **k: Any) -> Any:
        return _NoopMC()

    def close(self) -> None:
        pass


def bench_hotpath(n: int, loops: int) -> dict[str, Any]:
    """discovery's cost per RPC above grpc's: its multicallables over no-op backends."""
    from discovery.channel import ChannelSettings, build_channel
    from discovery.testing import ManualResolverBuilder

    builder = ManualResolverBuilder("benchmicro", ResolverState(_addresses(n)))
    rr = _balancer_builders()["round_robin"]
    ch = build_channel(
        target="benchmicro:///x",
        resolver_factory=lambda core: builder.build(None, core, None),  # type: ignore[arg-type]
        balancer_factory=lambda core: rr.build(core, None),
        make_channel=lambda a: _NoopGrpcChannel(),
        settings=ChannelSettings(),
        service_config=discovery.parse_service_config(None),
        make_aio_channel=lambda a: _NoopAioChannel(),  # type: ignore[arg-type,return-value]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                ch.backends() and all(b.state is READY for b in ch.backends())):
            time.sleep(0.01)
        mc = ch.unary_unary("/bench.Bench/Echo")
        noop = _NoopMC()
        req = b"x"
        for _ in range(2 * n):
            mc(req, 30.0)  # build every backend's cached multicallable
        res = {"backends": n}
        res["noop_call_us"] = _best_per_call(lambda: noop(req, 30.0), loops) * 1e6
        res["discovery_call_us"] = _best_per_call(lambda: mc(req, 30.0), loops) * 1e6
        res["discovery_with_call_us"] = _best_per_call(lambda: mc.with_call(req, 30.0), loops) * 1e6
        res.update(_future_costs(mc, req, n, loops))
        res["overhead_call_us"] = res["discovery_call_us"] - res["noop_call_us"]
        # Components.
        core = ch._core
        picker = core.picker
        res["pick_us"] = _best_per_call(lambda: picker.pick("/bench.Bench/Echo", None), loops) * 1e6
        b: Backend = core.manager.backends[0]
        key = mc._key
        cache = b.callables
        res["callables_get_tuple_key_us"] = _best_per_call(lambda: cache.get(key), loops) * 1e6
        ikey = 7
        icache = {ikey: cache.get(key)}
        res["callables_get_int_key_us"] = _best_per_call(lambda: icache.get(ikey), loops) * 1e6
        end = b.end

        def begin_end() -> None:
            b.begin()
            end()
        res["begin_end_us"] = _best_per_call(begin_end, loops) * 1e6
        return res
    finally:
        ch.close()


def _ignore(_f: Any) -> None:
    pass


def _futures_cpu(mc: Any, req: Any, total: int, batch: int = 32) -> tuple[float, float]:
    """CPU seconds per ``mc.future(req).add_done_callback`` in windows of ``batch``: (process, calling thread).

    Best of 3. The calling thread's share is its ``time.thread_time``; the
    rest is other threads (the futures loop).
    """
    left = [0]
    lock = threading.Lock()
    done = threading.Event()

    def cb(_f: Any) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    fut = mc.future
    best = (float("inf"), float("inf"))
    for _ in range(3):
        c0, t0 = time.process_time(), time.thread_time()
        for _ in range(0, total, batch):
            done.clear()
            left[0] = batch
            for _ in itertools.repeat(None, batch):
                fut(req, 30.0).add_done_callback(cb)
            if not done.wait(30):
                raise TimeoutError("no-op futures did not complete")
        best = min(best, ((time.process_time() - c0) / total, (time.thread_time() - t0) / total))
    return best


def _future_costs(mc: Any, req: Any, n: int, loops: int) -> dict[str, float]:
    """``.future()`` + done-callback on no-op backends (the shared aio loop's path)."""
    for _ in range(2 * n):
        mc.future(req, 30.0).result(10)  # make every backend's (no-op) aio twin
    cpu, caller = _futures_cpu(mc, req, loops)
    return {"future_cpu_us": cpu * 1e6, "future_caller_us": caller * 1e6}


# -- memory ----------------------------------------------------------------

def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_memory_idle(n: int) -> dict[str, Any]:
    """Per idle backend: Backend + real grpc channel, never connected."""
    loop = ControlLoop("bench-mem")
    try:
        warm = _real_grpc_channel(Address("127.255.0.1", 1))  # grpc core's one-time init
        warm.close()
        gc.collect()
        mgr = SubchannelManager(loop, _real_make_channel, drain_grace=0.0)
        tracemalloc.start()
        r0 = _rss_kib()
        s0 = tracemalloc.take_snapshot()
        mgr.update(ResolverState(_addresses(n)))
        gc.collect()
        r1 = _rss_kib()
        s1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        py = sum(st.size_diff for st in s1.compare_to(s0, "filename"))
        res = {"backends": n, "rss_kib_per_backend": (r1 - r0) / n, "python_bytes_per_backend": py / n}
        mgr.close_all()
        return res
    finally:
        loop.stop()


def _has_twin(b: Backend) -> bool:
    twins = getattr(b, "aio_twins", None)  # one per event loop (newer code), or one (aio_twin)
    return bool(twins) if twins is not None else getattr(b, "aio_twin", None) is not None


def bench_memory_connected(targets: Sequence[str]) -> dict[str, Any]:
    """Per READY backend, discovery vs grpc's round_robin, via RSS deltas."""
    n = len(targets)
    out: dict[str, Any] = {"backends": n}
    gc.collect()
    r0 = _rss_kib()
    ch = discovery.insecure_channel("static:///" + ",".join(targets),
                                    service_config={"loadBalancingConfig": [{"round_robin": {}}]})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            len(ch.backends()) == n and all(b.state is READY for b in ch.backends())):
        time.sleep(0.02)
    mc = ch.unary_unary("/bench.Bench/Echo")
    for _ in range(2 * n):
        mc(b"x", 30.0)
    gc.collect()
    time.sleep(0.2)
    r1 = _rss_kib()
    out["discovery_rss_kib_per_backend"] = (r1 - r0) / n
    # What an idle discovery channel costs in the background (control loop polls).
    c0 = time.process_time()
    time.sleep(2.0)
    out["discovery_idle_cpu_ms_per_s"] = (time.process_time() - c0) / 2.0 * 1e3
    # Futures: each backend gets its grpc.aio twin (and a second connection) on first use.
    gc.collect()
    r0 = _rss_kib()
    for _ in range(0, 2 * n, 64):  # windows of 64, as the benchmarks keep few calls in flight
        futs = [mc.future(b"x", 30.0) for _ in range(64)]
        for f in futs:
            f.result()
    del futs
    twins = sum(_has_twin(b) for b in ch._core.manager.backends)
    gc.collect()
    time.sleep(0.2)
    out["aio_twins"] = twins
    out["aio_twin_rss_kib_per_backend"] = (_rss_kib() - r0) / max(1, twins)
    c0 = time.process_time()
    time.sleep(2.0)
    out["discovery_idle_cpu_with_twins_ms_per_s"] = (time.process_time() - c0) / 2.0 * 1e3
    ch.close()
    gc.collect()
    r0 = _rss_kib()
    b = grpc.insecure_channel("ipv4:" + ",".join(targets),
                              [("grpc.lb_policy_name", "round_robin"), ("grpc.default_authority", "localhost")])
    bmc = b.unary_unary("/bench.Bench/Echo")
    for _ in range(2 * n):
        bmc(b"x", 30.0, wait_for_ready=True)
    time.sleep(min(2.0, 0.2 + n / 500))
    for _ in range(2 * n):
        bmc(b"x", 30.0)
    gc.collect()
    r1 = _rss_kib()
    out["grpc_rr_rss_kib_per_backend"] = (r1 - r0) / n
    c0 = time.process_time()
    time.sleep(2.0)
    out["grpc_rr_idle_cpu_ms_per_s"] = (time.process_time() - c0) / 2.0 * 1e3
    b.close()
    return out


def _in_child(fn: str, *args: Any) -> dict[str, Any]:
    """Run ``bench.micro.<fn>(*args)`` in a new interpreter; its JSON result."""
    import json
    import os
    import subprocess

    code = ("import json, sys; from bench import micro; "
            f"print(json.dumps(micro.{fn}(*json.loads(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                       cwd=root, env=env, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"micro.{fn} failed in its child process:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_micro(*, quick: bool = False, sizes: Sequence[int] = (10, 1000, 10000),
              reconcile_n: int = 10000, mem_idle: int = 1000, mem_connected: int = 1000,
              out: Any = sys.stdout, only: str | None = None) -> dict[str, Any]:
    """Run every micro-benchmark (``only="pick"``: pick costs and ring_hash's ring), print a table,
    return the numbers."""
    from .procs import BackendProcess

    loops = 20000 if quick else 200000
    if quick:
        sizes, reconcile_n, mem_idle, mem_connected = (10, 1000), 1000, 100, 10
    res: dict[str, Any] = {}
    res["pick"] = bench_pick(sizes, loops) + bench_spread_pick(sizes, loops)
    res["ring"] = bench_ring(sizes[-1])
    if only == "pick":
        print(format_pick(res), file=out)
        return res
    res["reconcile"] = [bench_reconcile(reconcile_n, 0.01, real=False),
                        bench_reconcile(reconcile_n, 0.01, real=True)]
    res["hotpath"] = [bench_hotpath(n, loops // 4) for n in (10, 1000)]
    # Memory in fresh processes: RSS deltas mean nothing after other benchmarks freed memory.
    res["memory_idle"] = _in_child("bench_memory_idle", mem_idle)
    with BackendProcess(mem_connected) as bp:
        res["memory_connected"] = _in_child("bench_memory_connected", bp.targets)
    print(format_micro(res), file=out)
    return res


def format_pick(res: dict[str, Any]) -> str:
    lines = ["pick cost: one pick and its done (goal <= 1 us/pick)",
             f"  {'balancer':22} {'backends':>8} {'us/pick':>8} {'net us':>7}  {'picker':18} verdict"]
    for r in res["pick"]:
        if "error" in r:
            lines.append(f"  {r['balancer']:22} {r['backends']:8}  error: {r['error']}")
            continue
        lines.append(f"  {r['balancer']:22} {r['backends']:8} {r['pick_us']:8.3f} {r['pick_us_net']:7.3f}  "
                     f"{r.get('picker', ''):18} {'ok' if r['ok'] else 'MISSES'}")
    r = res.get("ring")
    if r and r["update_ms"] is not None:
        lines.append(f"  ring_hash at {r['backends']} backends: ring build {r['ring_default_ms']:.1f} ms "
                     f"({r['ring_default_entries']} entries, default sizes), {r['ring_large_ms']:.1f} ms "
                     f"({r['ring_large_entries']} entries); whole address-set update {r['update_ms']:.1f} ms")
    return "\n".join(lines)


def format_micro(res: dict[str, Any]) -> str:
    lines = [format_pick(res)]
    lines.append("")
    lines.append("reconcile, SubchannelManager (goals: identical <= 1 ms, 1 % churn <= 50 ms)")
    for r in res["reconcile"]:
        kind = "real grpc channels" if r["real_channels"] else "fake make_channel"
        lines.append(
            f"  {r['backends']} addresses, {kind}: first state {r['create_ms']:.1f} ms "
            f"({r['create_us_per_backend']:.1f} us/backend); identical {r['identical_ms']:.3f} ms "
            f"[{'ok' if r['identical_ms'] <= 1 else 'MISSES'}]; 1% churn {r['churn_ms']:.2f} ms "
            f"[{'ok' if r['churn_ms'] <= 50 else 'MISSES'}]; unchanged untouched: {r['unchanged_untouched']}; "
            f"close_all {r['close_all_ms']:.1f} ms")
        lines.append(
            f"    ResolverState == on two equal states {r['state_eq_ms']:.3f} ms; building a state (its key) from "
            f"{r['backends']} Addresses {r['state_construct_ms']:.2f} ms, with the Addresses "
            f"{r['state_and_addresses_construct_ms']:.1f} ms (resolver thread)")
    lines.append("")
    lines.append("discovery's own cost per RPC (no-op grpc multicallables underneath)")
    for r in res["hotpath"]:
        lines.append(
            f"  N={r['backends']}: __call__ {r['discovery_call_us']:.2f} us (no-op alone {r['noop_call_us']:.2f}, "
            f"overhead {r['overhead_call_us']:.2f}); with_call {r['discovery_with_call_us']:.2f}; "
            f"parts: pick {r['pick_us']:.2f}, callables.get {r['callables_get_tuple_key_us']:.3f}, "
            f"begin+end {r['begin_end_us']:.2f}")
        lines.append(
            f"    future+callback, process CPU (caller + loop thread): {r['future_cpu_us']:.2f} us "
            f"(calling thread {r['future_caller_us']:.2f}, loop thread the rest)")
    lines.append("")
    m = res["memory_idle"]
    lines.append(f"memory per idle backend ({m['backends']} real channels, not connected): "
                 f"RSS {m['rss_kib_per_backend']:.1f} KiB, Python heap {m['python_bytes_per_backend']:.0f} B")
    m = res["memory_connected"]
    twin = m["aio_twin_rss_kib_per_backend"]
    lines.append(f"memory per connected backend ({m['backends']} READY): discovery RSS "
                 f"{m['discovery_rss_kib_per_backend']:.1f} KiB sync only, + {twin:.1f} KiB once it serves "
                 f"futures (aio twin, {m['aio_twins']} made) = {m['discovery_rss_kib_per_backend'] + twin:.1f} KiB; "
                 f"grpc round_robin subchannel RSS {m['grpc_rr_rss_kib_per_backend']:.1f} KiB")
    lines.append(f"idle CPU with {m['backends']} READY backends: discovery channel "
                 f"{m['discovery_idle_cpu_ms_per_s']:.1f} ms/s ({m['discovery_idle_cpu_with_twins_ms_per_s']:.1f} "
                 f"with the aio twins), grpc round_robin channel {m['grpc_rr_idle_cpu_ms_per_s']:.1f} ms/s")
    return "\n".join(lines)
