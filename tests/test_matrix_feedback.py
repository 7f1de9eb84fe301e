"""Per-RPC feedback: a balancer written as README's "Writing a balancer" shows
(examples/custom_balancer.py's ``tally``) gets exactly one DoneInfo per attempt, on every
sync and asyncio call shape, retried and hedged attempts included, with the attempt's
code, a sane latency and the server's trailing metadata."""

from __future__ import annotations

import time

import grpc
import pytest
from callshapes import METHOD, SHAPES, SINGLE_REQUEST, method_config
from policies import registered

from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import static_target
from examples.custom_balancer import Tally, TallyBuilder

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
RETRY = {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
         "retryableStatusCodes": ["UNAVAILABLE"]}


def _settled(c, tally: Tally, attempts: int) -> list:  # type: ignore[no-untyped-def]
    """Every attempt reported (futures and streams report when grpc ends the call), then no more."""
    wait_for(lambda: len(tally.seen()) >= attempts, 5, message=f"{attempts} DoneInfos")
    c.wait_idle()
    seen = tally.seen()
    assert len(seen) == attempts, "exactly one DoneInfo per attempt"
    return seen


@pytest.mark.parametrize("shape", SHAPES)
def test_one_done_info_per_attempt(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    bad, good = start_backends(2)
    bad.fail_with = UNAVAILABLE
    for s in (bad, good):
        s.trailing_metadata = (("x-served-by", s.name),)
    tally = Tally()
    with registered(TallyBuilder(tally)):
        c = clients(shape, static_target([bad, good]),
                    service_config={"loadBalancingConfig": [{"tally": {}}], **method_config(retryPolicy=RETRY)})
        wait_ready(c.channel, 2)
        t0 = time.monotonic()
        outcomes = [c.call(shape) for _ in range(4)]
        wall = time.monotonic() - t0
    method = METHOD[shape]
    attempts = bad.calls[method] + good.calls[method]
    assert bad.calls[method] >= 1
    if shape in SINGLE_REQUEST:
        assert all(o.ok for o in outcomes) and attempts == 4 + bad.calls[method]
    seen = _settled(c, tally, attempts)
    by_backend = {bad.addr: bad, good.addr: good}
    for addr, info in seen:
        s = by_backend[addr]
        assert info.code is (UNAVAILABLE if s is bad else OK)
        assert 0 < info.latency < wall
        # Every shape sees the trailing metadata: blocking calls, futures, streams, asyncio.
        assert ("x-served-by", s.name) in info.trailing_metadata
    assert sum(addr == bad.addr for addr, _ in seen) == bad.calls[method]
    assert sum(addr == good.addr for addr, _ in seen) == good.calls[method]


@pytest.mark.parametrize("shape", ["unary", "with_call", "future", "aio_unary"])
def test_one_done_info_per_hedge(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    slow, fast = start_backends(2)
    slow.delay = 5.0
    tally = Tally()
    sc = {"loadBalancingConfig": [{"tally": {}}],
          **method_config(hedgingPolicy={"maxAttempts": 2, "hedgingDelay": "0.05s"})}
    with registered(TallyBuilder(tally)):
        c = clients(shape, static_target([slow, fast]), service_config=sc)
        wait_ready(c.channel, 2)
        outcomes = [c.call(shape) for _ in range(4)]
    assert all(o.ok and o.backend == fast.name for o in outcomes)
    assert slow.calls["Unary"] >= 1
    seen = _settled(c, tally, slow.calls["Unary"] + fast.calls["Unary"])
    # The losing hedges were cancelled: their DoneInfo says so, after about the hedging delay.
    for addr, info in seen:
        if addr == slow.addr:
            assert info.code is grpc.StatusCode.CANCELLED and 0.03 < info.latency < 1.0
        else:
            assert info.code is OK and info.latency < 1.0


@pytest.mark.parametrize("shape", ["unary", "future", "unary_stream", "aio_unary", "aio_unary_stream"])
def test_deadline_exceeded_attempt_is_reported(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    s.delay = 5.0
    tally = Tally()
    with registered(TallyBuilder(tally)):
        c = clients(shape, static_target([s]), service_config={"loadBalancingConfig": [{"tally": {}}]})
        wait_ready(c.channel, 1)
        out = c.call(shape, timeout=0.2)
    assert out.code is grpc.StatusCode.DEADLINE_EXCEEDED
    ((addr, info),) = _settled(c, tally, 1)
    assert addr == s.addr and info.code is grpc.StatusCode.DEADLINE_EXCEEDED and 0.15 < info.latency < 1.0


@pytest.mark.parametrize("shape", ["stream_unary_future", "aio_stream_unary", "aio_stream_stream"])
def test_request_streams_report_the_servers_status(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    """grpc.aio may end a request stream the server failed mid-write twice (discovery._grpc_compat):
    the caller and the DoneInfo both get the server's status, never grpc.aio's INTERNAL."""
    (s,) = start_backends(1)
    s.fail_with = UNAVAILABLE
    s.trailing_metadata = (("x-served-by", s.name),)
    tally = Tally()
    with registered(TallyBuilder(tally)):
        c = clients(shape, static_target([s]), service_config={"loadBalancingConfig": [{"tally": {}}]})
        wait_ready(c.channel, 1)
        outcomes = [c.call(shape) for _ in range(100)]
    assert {(o.code, o.details) for o in outcomes} == {(UNAVAILABLE, f"{s.name} fails this RPC with UNAVAILABLE")}
    seen = _settled(c, tally, 100)
    assert {info.code for _, info in seen} == {UNAVAILABLE}
    assert all(("x-served-by", s.name) in info.trailing_metadata for _, info in seen)


def test_the_example_prints_one_line_per_attempt() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "examples.custom_balancer"], cwd=root, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    assert out[0].split() == ["backend", "status", "latency", "trailing", "metadata"]
    rows = [line.split()[:2] for line in out[1:]]
    # Six RPCs, one retried: seven attempts, the failed one on alpha.
    assert len(rows) == 7 and rows.count(["alpha", "UNAVAILABLE"]) == 1
    assert sum(status == "OK" for _, status in rows) == 6
