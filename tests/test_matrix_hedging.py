"""hedgingPolicy (gRFC A6) on every call shape: grpcio's C-core never implemented hedging.

Hedging applies to calls with one request and one response (blocking, ``with_call``,
``.future()``, asyncio unary-unary). A server stream commits to its backend at the first
message and a request stream is never replayed: those shapes run one attempt, as
documented, which the last test asserts.
"""

from __future__ import annotations

import statistics

import grpc
import pytest
from callshapes import METHOD, SHAPES, method_config
from policies import InOrderBuilder, StutterBuilder, registered

from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import static_target

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

HEDGED = ("unary", "with_call", "future", "aio_unary")
NOT_HEDGED = tuple(s for s in SHAPES if s not in HEDGED)


def _config(policy: str | None = None, **hedging: object) -> dict[str, object]:
    sc: dict[str, object] = method_config(hedgingPolicy={"maxAttempts": 2, "hedgingDelay": "0.05s", **hedging})
    if policy is not None:
        sc["loadBalancingConfig"] = [{policy: {}}]
    return sc


@pytest.mark.parametrize("shape", HEDGED)
def test_p50_stays_near_the_fast_backend(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    slow, fast = start_backends(2)
    slow.delay = 1.0
    c = clients(shape, static_target([slow, fast]), service_config=_config())
    wait_ready(c.channel, 2)
    outcomes = [c.call(shape) for _ in range(20)]
    assert all(o.ok and o.backend == fast.name for o in outcomes)
    latencies = [o.elapsed for o in outcomes]
    # Round robin sends half of the first attempts to the slow backend; the hedge after
    # 50 ms answers them all. Without hedging the median would be about 0.5 s.
    assert statistics.median(latencies) < 0.3, latencies
    assert max(latencies) < 0.9, latencies
    assert slow.calls["Unary"] >= 5
    wait_for(lambda: slow.cancelled == slow.calls["Unary"], 5, message="every slow attempt cancelled")
    c.wait_idle()


@pytest.mark.parametrize("shape", HEDGED)
def test_hedges_go_to_untried_backends_and_the_losers_are_cancelled(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    a, b, fast = start_backends(3)
    a.delay = b.delay = 5.0
    # The stutter policy offers every backend twice in a row: each hedge only reaches a
    # new backend because the channel asks the picker again for one not tried yet.
    with registered(StutterBuilder()):
        c = clients(shape, static_target([a, b, fast]), service_config=_config("stutter", maxAttempts=3))
        wait_ready(c.channel, 3)
        out = c.call(shape)
    assert out.ok and out.backend == fast.name and out.elapsed < 1.0
    assert (a.calls["Unary"], b.calls["Unary"], fast.calls["Unary"]) == (1, 1, 1)
    # The first success wins; the slow servers see their attempts cancelled.
    wait_for(lambda: a.cancelled == 1 and b.cancelled == 1, 5, message="losing hedges cancelled on the servers")
    c.wait_idle()


@pytest.mark.parametrize("shape", HEDGED)
@pytest.mark.parametrize("code", ["UNAVAILABLE", "INTERNAL"])
def test_non_fatal_status_codes(shape, code, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    first, second = start_backends(2)
    first.fail_with = grpc.StatusCode[code]
    with registered(InOrderBuilder()):
        # The hedging delay is long: what happens after the first attempt fails is up to its status.
        c = clients(shape, static_target([first, second]),
                    service_config=_config("in_order", hedgingDelay="2s", nonFatalStatusCodes=["UNAVAILABLE"]))
        wait_ready(c.channel, 2)
        out = c.call(shape)
    if code == "UNAVAILABLE":
        # Non-fatal: the next hedge goes at once, nothing else being in flight.
        assert out.ok and out.backend == second.name and out.elapsed < 1.0
    else:
        # Fatal: the RPC ends with it; no further hedge.
        assert out.code is grpc.StatusCode.INTERNAL and second.calls["Unary"] == 0
    assert first.calls["Unary"] == 1


@pytest.mark.parametrize("shape", HEDGED)
def test_throttling_stops_hedges(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    for s in servers:
        s.fail_with = UNAVAILABLE
    sc = {**_config(maxAttempts=3, hedgingDelay="0s", nonFatalStatusCodes=["UNAVAILABLE"]),
          "retryThrottling": {"maxTokens": 4, "tokenRatio": 0.1}}
    c = clients(shape, static_target(servers), service_config=sc)
    wait_ready(c.channel, 3)
    # Three hedges, three non-fatal failures: tokens 4 -> 1, at or below half of the bucket.
    assert c.call(shape).code is UNAVAILABLE
    assert sum(s.total for s in servers) == 3
    assert c.core.throttle.tokens == 1
    # Now the first attempt goes alone.
    assert c.call(shape).code is UNAVAILABLE
    assert sum(s.total for s in servers) == 4
    c.wait_idle()


@pytest.mark.parametrize("shape", HEDGED)
@pytest.mark.parametrize("pushback", [300, -1])
def test_pushback_is_honoured(shape, pushback, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    first, second = start_backends(2)
    first.fail_with = UNAVAILABLE
    first.pushback_ms = pushback
    with registered(InOrderBuilder()):
        c = clients(shape, static_target([first, second]),
                    service_config=_config("in_order", hedgingDelay="2s", nonFatalStatusCodes=["UNAVAILABLE"]))
        wait_ready(c.channel, 2)
        out = c.call(shape)
    if pushback >= 0:
        # The server asked for the next hedge after 300 ms (not at once, not after hedgingDelay).
        assert out.ok and out.backend == second.name
        assert 0.28 <= out.elapsed < 1.5, out.elapsed
    else:
        # A negative pushback means: no more hedges.
        assert out.code is UNAVAILABLE and second.calls["Unary"] == 0


@pytest.mark.parametrize("shape", HEDGED)
def test_hedging_ends_when_every_backend_has_failed(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    for s in servers:
        s.fail_with = UNAVAILABLE
    c = clients(shape, static_target(servers),
                service_config=_config(maxAttempts=3, hedgingDelay="0s", nonFatalStatusCodes=["UNAVAILABLE"]))
    wait_ready(c.channel, 2)
    # No deadline: with both backends tried and nothing in flight, the third copy goes to a
    # tried backend (rather than waiting for an untried one forever), then the RPC ends.
    out = c.call(shape, timeout=None)
    assert out.code is UNAVAILABLE and out.elapsed < 2.0
    assert sum(s.total for s in servers) == 3
    c.wait_idle()


@pytest.mark.parametrize("shape", NOT_HEDGED)
def test_other_shapes_run_one_attempt(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    slow, fast = start_backends(2)
    slow.delay = 0.5
    with registered(InOrderBuilder()):
        c = clients(shape, static_target([slow, fast]), service_config=_config("in_order"))
        wait_ready(c.channel, 2)
        out = c.call(shape)
    # Documented: no hedge for a server stream or a request stream; the one attempt answers.
    assert out.ok and out.backend == slow.name and out.elapsed >= 0.45
    assert fast.calls[METHOD[shape]] == 0
