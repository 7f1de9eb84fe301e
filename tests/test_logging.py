"""Log records: one logger per component, one record per state change, target/backend extras, no secrets."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import grpc
import pytest

import discovery
from discovery.address import ResolverState
from discovery.errors import ConfigError, ResolverError
from discovery.resolver import PollingResolver
from discovery.testing import FakeClock, ManualResolverBuilder, RecordingListener, addresses, wait_for, wait_ready
from discovery.testing.servers import BackendServer, EchoStub, static_target

pytestmark = pytest.mark.integration

Start = Callable[..., list[BackendServer]]
SECRETS = ("s3cret-token", "s3cret-key", "s3cret-config")


def records(caplog: pytest.LogCaptureFixture, logger: str, contains: str = "") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and contains in r.getMessage()]


def test_channel_records_state_changes_once_each(start_backends: Start, manual: ManualResolverBuilder,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    a, b = start_backends(2)
    target = "manual:///orders"
    caplog.set_level(logging.DEBUG, logger="discovery")
    with discovery.insecure_channel(target) as ch:
        r = manual.resolver
        r.push(addresses(a.addr, b.addr))
        wait_ready(ch, 2)
        r.push(addresses(a.addr, b.addr))  # the same set again: nothing to say
        r.fail("registry down")
        r.fail("registry down")  # the same error again: not logged again
        r.push(addresses(b.addr))
        wait_for(lambda: len(ch.backends()) == 1)
        EchoStub(ch).Unary(b"x", timeout=5)
    sets = records(caplog, "discovery.channel", "address set of manual:///orders: ")
    assert [s.getMessage() for s in sets if s.levelno == logging.INFO] == [
        "address set of manual:///orders: 2 backends, 2 added, 0 removed",
        "address set of manual:///orders: 1 backends, 0 added, 1 removed",
    ]
    assert [s.getMessage() for s in sets if s.levelno == logging.DEBUG][1] == (
        f"address set of manual:///orders: added none; removed {a.addr}")
    errors = records(caplog, "discovery.channel", "resolver error")
    assert len(errors) == 1 and errors[0].levelno == logging.WARNING
    assert "registry down" in errors[0].getMessage()
    assert len(records(caplog, "discovery.channel", "recovered")) == 1
    # The channel's own state: each transition once, the close included.
    states = [r.getMessage() for r in records(caplog, "discovery.channel", f"channel {target}: ")]
    assert states == [f"channel {target}: IDLE -> CONNECTING", f"channel {target}: CONNECTING -> READY",
                      f"channel {target}: READY -> SHUTDOWN"]
    # Each backend: new -> CONNECTING -> READY, once each, with the backend named.
    for server in (a, b):
        seen = [r for r in records(caplog, "discovery.channel", f"backend {server.addr} of {target}: ")]
        assert [r.getMessage().split(": ", 1)[1] for r in seen][-1].endswith("-> READY")
        assert len({r.getMessage() for r in seen}) == len(seen)
        assert all(r.backend == server.addr for r in seen)  # type: ignore[attr-defined]
    for rec in caplog.records:
        if rec.name == "discovery.channel":
            assert rec.target == target  # type: ignore[attr-defined]


def test_failing_backend_and_ejection_records(start_backends: Start, caplog: pytest.LogCaptureFixture) -> None:
    a, b = start_backends(2)
    target = static_target([a, b])
    sc = {"loadBalancingConfig": [{"outlier_detection": {
        "consecutiveErrors": 2, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
        "childPolicy": [{"round_robin": {}}]}}],
        "healthCheckConfig": {"serviceName": "discovery.testing.Echo"}}
    caplog.set_level(logging.INFO, logger="discovery")
    with discovery.insecure_channel(target, service_config=sc) as ch:
        wait_ready(ch, 2)
        a.fail_with = grpc.StatusCode.UNAVAILABLE
        stub = EchoStub(ch)
        for _ in range(4):
            with contextlib.suppress(grpc.RpcError):
                stub.Unary(b"x", timeout=5)
        wait_for(lambda: records(caplog, "discovery.balancer.outlier_detection", "ejecting"))
        b.set_health(2)  # NOT_SERVING
        wait_for(lambda: records(caplog, "discovery.channel", f"backend {b.addr} of {target}: READY -> "))
    (ejected,) = records(caplog, "discovery.balancer.outlier_detection", "ejecting")
    assert ejected.levelno == logging.WARNING
    assert (ejected.target, ejected.backend) == (target, a.addr)  # type: ignore[attr-defined]
    (unhealthy,) = records(caplog, "discovery.channel", f"backend {b.addr} of {target}: READY -> ")
    assert unhealthy.levelno == logging.INFO
    assert unhealthy.getMessage().endswith("TRANSIENT_FAILURE (unhealthy)")
    assert unhealthy.backend == b.addr  # type: ignore[attr-defined]


def test_resolver_records_use_the_scheme_logger_with_the_target(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    listener = RecordingListener()
    calls = []

    def lookup() -> ResolverState:
        calls.append(1)
        raise ResolverError("registry unreachable")

    resolver = PollingResolver(listener, lookup, name="myreg:orders.internal", clock=clock, interval=5.0,
                               min_interval=1.0)
    caplog.set_level(logging.DEBUG, logger="discovery.resolver")
    resolver.start()
    try:
        listener.wait_for_count(errors=1)
        clock.wait_for_blocked()
        clock.advance(5.0)
        listener.wait_for_count(errors=2)
    finally:
        resolver.close()
    warned = records(caplog, "discovery.resolver.myreg", "registry unreachable")
    assert len(warned) == 1  # the same error twice is one record
    assert warned[0].target == "orders.internal"  # type: ignore[attr-defined]


def test_no_secret_reaches_a_log_record(start_backends: Start, manual: ManualResolverBuilder,
                                        caplog: pytest.LogCaptureFixture) -> None:
    a, b = start_backends(2)
    a.fail_with = grpc.StatusCode.UNAVAILABLE
    metadata = (("authorization", "Bearer s3cret-token"), ("x-api-key", "s3cret-key"))
    sc = {"methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
        "retryableStatusCodes": ["UNAVAILABLE"]}}]}
    caplog.set_level(logging.DEBUG, logger="discovery")
    with pytest.raises(ConfigError):
        discovery.insecure_channel(static_target([a]), resolver_config={"token": "s3cret-config"})
    with discovery.insecure_channel("manual:///svc", service_config=sc) as ch:
        manual.resolver.push(addresses(a.addr, b.addr))
        wait_ready(ch, 2)
        stub = EchoStub(ch)
        for _ in range(3):
            stub.Unary(b"x", timeout=5, metadata=metadata)
            stub.Unary.future(b"x", timeout=5, metadata=metadata).result()
        b.fail_with = grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError):
            stub.Unary(b"x", timeout=5, metadata=metadata)
        assert ("authorization", "Bearer s3cret-token") in b.last_metadata  # it did travel
        manual.resolver.fail("registry down")
        manual.resolver.push(addresses(b.addr))
        wait_for(lambda: len(ch.backends()) == 1)
    assert caplog.records
    for rec in caplog.records:
        text = rec.getMessage() + repr(rec.args) + (rec.exc_text or "") + repr(vars(rec))
        for secret in SECRETS:
            assert secret not in text, rec
        for key in ("target", "backend"):
            if hasattr(rec, key):
                assert isinstance(getattr(rec, key), str)
