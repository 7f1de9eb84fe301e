"""discovery.attempts: the one place that reads grpcio's "never sent" wording, pinned against
a real grpcio; and the attempt rules as values (no servers needed)."""

from __future__ import annotations

import asyncio
import json
import random

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2

from discovery.attempts import _NOT_SENT_PREFIXES, Attempts, RetryThrottle, effective_deadline, never_sent, pushback_of
from discovery.methodconfig import HedgingPolicy, MethodConfig, RetryPolicy
from discovery.testing.servers import SERVICE, BackendServer, EchoStub

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# What every backend channel is given (discovery/__init__.py), plus the health-checked variant.
BACKEND_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
HEALTH_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                            "healthCheckConfig": {"serviceName": SERVICE}})


def _sync_error(target: str, options: list[tuple[str, object]]) -> grpc.RpcError:
    ch = grpc.insecure_channel(target, options)
    try:
        with pytest.raises(grpc.RpcError) as info:
            EchoStub(ch).Unary(b"", timeout=5, wait_for_ready=False)
        return info.value
    finally:
        ch.close()


def _aio_error(target: str, options: list[tuple[str, object]]) -> grpc.aio.AioRpcError:
    async def main() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(target, options) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await EchoStub(ch).Unary(b"", timeout=5, wait_for_ready=False)
            return info.value

    return asyncio.run(main())


@pytest.mark.parametrize("health", [False, True], ids=["plain", "health-checked"])
@pytest.mark.parametrize("runtime", ["sync", "aio"])
def test_grpcio_says_never_sent_for_a_port_nobody_listens_on(dead_port, health, runtime) -> None:  # type: ignore[no-untyped-def]
    options = [*BACKEND_OPTIONS, *([("grpc.service_config", HEALTH_CONFIG)] if health else [])]
    err = (_sync_error if runtime == "sync" else _aio_error)(f"127.0.0.1:{dead_port}", options)
    assert err.code() is UNAVAILABLE
    assert never_sent(err.code(), err.details()), (
        f"grpcio {grpc.__version__} words a never-sent RPC differently: {err.details()!r}; "
        f"update discovery.attempts._NOT_SENT_PREFIXES {_NOT_SENT_PREFIXES}")


def test_grpcio_says_never_sent_for_a_backend_failing_its_health_check() -> None:
    s = BackendServer().start()
    try:
        s.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        ch = grpc.insecure_channel(s.addr, [*BACKEND_OPTIONS, ("grpc.service_config", HEALTH_CONFIG)])
        try:
            with pytest.raises(grpc.RpcError) as info:
                EchoStub(ch).Unary(b"", timeout=5, wait_for_ready=False)
        finally:
            ch.close()
        assert never_sent(info.value.code(), info.value.details()), info.value.details()
        assert s.calls["Unary"] == 0
    finally:
        s.stop()


def test_a_server_s_own_unavailable_is_not_never_sent() -> None:
    s = BackendServer().start()
    try:
        s.fail_with = UNAVAILABLE
        err = _sync_error(s.addr, BACKEND_OPTIONS)
        assert err.code() is UNAVAILABLE and not never_sent(err.code(), err.details())
        assert s.calls["Unary"] == 1
    finally:
        s.stop()


# -- the rules as values ----------------------------------------------------------------

RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0,
                    retryable=frozenset({UNAVAILABLE}))


def test_effective_deadline_is_the_earlier() -> None:
    mc = MethodConfig(timeout=2.0)
    assert effective_deadline(0.5, mc, 100.0) == 100.5
    assert effective_deadline(5.0, mc, 100.0) == 102.0
    assert effective_deadline(None, mc, 100.0) == 102.0
    assert effective_deadline(None, None, 100.0) is None


@pytest.mark.parametrize(("trailer", "expected"), [
    ((("grpc-retry-pushback-ms", "250"),), 0.25),
    ((("grpc-retry-pushback-ms", b"0"),), 0.0),
    ((("grpc-retry-pushback-ms", "-1"),), -1.0),
    ((("grpc-retry-pushback-ms", "soon"),), -1.0),
    ((("other", "1"),), None),
    ((), None),
])
def test_pushback(trailer: tuple[tuple[str, str | bytes], ...], expected: float | None) -> None:
    assert pushback_of(trailer) == expected


def test_retries_backoff_pushback_and_limit() -> None:
    att = Attempts(MethodConfig(retry=RETRY), None, None, None, 3)
    rng = random.Random(1)
    first = att.after_failure(UNAVAILABLE, "x", rng=rng)
    assert first is not None and 0 <= first < 0.1
    assert att.after_failure(UNAVAILABLE, "x", (("grpc-retry-pushback-ms", "40"),)) == 0.04
    assert att.after_failure(UNAVAILABLE, "x") is None  # maxAttempts 3 reached
    att = Attempts(MethodConfig(retry=RETRY), None, None, None, 3)
    assert att.after_failure(grpc.StatusCode.INTERNAL, "x") is None  # not retryable
    assert att.after_failure(UNAVAILABLE, "x", (("grpc-retry-pushback-ms", "-1"),)) is None


def test_transparent_repicks_are_bounded_and_not_retries() -> None:
    att = Attempts(None, None, None, None, max_transparent=2)
    never = "failed to connect to all addresses; last error: ..."
    assert att.after_failure(UNAVAILABLE, never) == 0.0
    assert att.after_failure(UNAVAILABLE, None, refused=True) == 0.0
    assert att.after_failure(UNAVAILABLE, never) is None
    assert att.retries == 0


def test_throttle_allows_while_more_than_half_remains() -> None:
    t = RetryThrottle(4, 0.5)
    att = Attempts(MethodConfig(retry=RETRY), t, None, None, 3)
    assert att.after_failure(UNAVAILABLE, "x") is not None  # 3 tokens left
    assert att.after_failure(UNAVAILABLE, "x") is None  # 2: not more than half
    t.on_success()
    assert t.tokens == 2.5 and t.allows_retry()


def test_a_request_stream_gets_no_retry_or_hedging() -> None:
    t = RetryThrottle(10, 0.1)
    hedged = Attempts(MethodConfig(hedging=HedgingPolicy(3, 0.1)), t, None, None, 3).no_replay()
    assert not hedged.may_hedge(1)
    retried = Attempts(MethodConfig(retry=RETRY), t, None, None, 3).no_replay()
    assert retried.after_failure(UNAVAILABLE, "x") is None
    assert retried.after_failure(UNAVAILABLE, None, refused=True) == 0.0  # refused before it started
    assert t.tokens == 10
