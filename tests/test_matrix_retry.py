"""Feature x call shape: retryPolicy across backends, transparent re-picks, retry throttling,
perAttemptRecvTimeout, on every sync and asyncio call shape, against real servers.

Shapes with one request message are replayed on another backend; request streams
(client-streaming, bidi) are never replayed, so for them each cell asserts the
documented behaviour instead: the first attempt's error reaches the caller unchanged.
"""

from __future__ import annotations

import grpc
import pytest
from callshapes import METHOD, SHAPES, SINGLE_REQUEST, method_config
from policies import InOrderBuilder, registered

from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import static_target

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

RETRY = {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
         "retryableStatusCodes": ["UNAVAILABLE"]}


@pytest.mark.parametrize("shape", SHAPES)
def test_retry_policy_goes_to_another_backend(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    bad, good = start_backends(2)
    bad.fail_with = UNAVAILABLE
    c = clients(shape, static_target([bad, good]), service_config=method_config(retryPolicy=RETRY))
    wait_ready(c.channel, 2)
    # Round robin: of 4 RPCs at least one starts on the failing backend.
    outcomes = [c.call(shape) for _ in range(4)]
    method = METHOD[shape]
    assert bad.calls[method] >= 1
    if shape in SINGLE_REQUEST:
        # Each attempt on `bad` was retried once, on `good` (never on `bad` again: Envoy's previous-hosts rule).
        assert [o.backend for o in outcomes] == [good.name] * 4
        assert good.calls[method] == 4
    else:
        # Documented: a request stream is never replayed; the error reaches the caller unchanged.
        failed = [o for o in outcomes if not o.ok]
        assert len(failed) == bad.calls[method] >= 1
        assert all(o.code is UNAVAILABLE and bad.name in o.details for o in failed)
        assert good.calls[method] == 4 - len(failed)
    c.wait_idle()


@pytest.mark.parametrize("shape", SHAPES)
def test_never_sent_attempt_is_repicked_transparently(shape, start_backends, clients, dead_port) -> None:  # type: ignore[no-untyped-def]
    (good,) = start_backends(1)
    dead = f"127.0.0.1:{dead_port}"
    # No retry policy at all: a never-sent attempt is no retry (gRFC A6's transparent retry).
    with registered(InOrderBuilder()):
        c = clients(shape, f"static:///{dead},{good.addr}",
                    service_config={"loadBalancingConfig": [{"in_order": {}}]})
        # Settled: the good backend READY, the dead one failing to connect.
        wait_ready(c.channel, 1)
        wait_for(lambda: c.backends()[0].state is grpc.ChannelConnectivity.TRANSIENT_FAILURE, 10,
                 message="dead backend in TRANSIENT_FAILURE")
        out = c.call(shape)
    method = METHOD[shape]
    if shape in SINGLE_REQUEST:
        assert out.ok and out.backend == good.name
        assert good.calls[method] == 1
    else:
        # Documented: grpcio may already have taken messages from the request iterator, so
        # the channel does not replay it; grpcio's own "never sent" error reaches the caller.
        assert out.code is UNAVAILABLE and good.calls[method] == 0
        assert "failed to connect to all addresses" in out.details or "backends failing" in out.details
    c.wait_idle()


@pytest.mark.parametrize("shape", SHAPES)
def test_throttling_stops_retries(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    for s in servers:
        s.fail_with = UNAVAILABLE
    sc = {**method_config(retryPolicy={**RETRY, "maxAttempts": 5}),
          "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
    c = clients(shape, static_target(servers), service_config=sc)
    wait_ready(c.channel, 2)
    unary = "aio_unary" if shape.startswith("aio_") else "unary"
    # The first RPC makes 5 attempts (tokens 10 -> 5); from then on the bucket is at or
    # below half, so retries stop (gRFC A6): one attempt per RPC.
    first = c.call(unary)
    assert first.code is UNAVAILABLE and sum(s.total for s in servers) == 5
    assert c.core.throttle.tokens == 5
    out = c.call(shape)
    assert out.code is UNAVAILABLE
    assert sum(s.total for s in servers) == 6, "a throttled RPC makes exactly one attempt"
    # A request stream has no part in retries, so none in throttling either.
    tokens = 4 if shape in SINGLE_REQUEST else 5
    assert c.core.throttle.tokens == tokens
    # Each success returns tokenRatio to the bucket.
    for s in servers:
        s.fail_with = None
    for _ in range(11):
        assert c.call(unary).ok
    assert c.core.throttle.tokens == pytest.approx(tokens + 11 * 0.1)
    c.wait_idle()


@pytest.mark.parametrize("shape", SHAPES)
def test_per_attempt_recv_timeout_retries_on_another_backend(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    slow, fast = start_backends(2)
    slow.delay = 0.6
    policy = {**RETRY, "perAttemptRecvTimeout": "0.2s"}
    c = clients(shape, static_target([slow, fast]), service_config=method_config(retryPolicy=policy))
    wait_ready(c.channel, 2)
    outcomes = [c.call(shape, timeout=10) for _ in range(4)]
    method = METHOD[shape]
    assert slow.calls[method] >= 1
    if shape in SINGLE_REQUEST:
        assert [o.backend for o in outcomes] == [fast.name] * 4
        assert all(o.elapsed < 0.55 for o in outcomes)
        # Each attempt that outlived perAttemptRecvTimeout was cancelled: the slow server saw it go.
        wait_for(lambda: slow.cancelled == slow.calls[method], 5, message="slow server saw every cancellation")
    else:
        # Documented: the retry policy, perAttemptRecvTimeout included, does not apply to a
        # request stream (it could not be retried anyway); only the call's deadline does.
        assert all(o.ok for o in outcomes)
        on_slow = [o for o in outcomes if o.backend == slow.name]
        assert len(on_slow) == slow.calls[method] and all(o.elapsed >= 0.55 for o in on_slow)
        assert slow.cancelled == 0
    c.wait_idle()
